"""Adaptive throttle controller (AIMD with suspensions), in event time.

Keys (the same strings as the reputation windows):

- ``group:<group>`` (scope "group") for provider groups;
- ``domain:<domain>`` (scope "domain") for domains of the ``default`` group, so a
  bad small domain never slows down every other small domain;
- ``ip_group:<ip>|<group>`` (scope "ip_group") for one sending IP towards one group.

Every key starts at the group's baselines (``max_rate_per_hour``, ``max_connections``,
``max_messages_per_connection``, ``retry_interval_s``); nothing is published for a key
until its setting differs from what was last published (baseline at first).

Negative feedback (``on_signal``):

- a rate-limit or block signal lowers a key at once: every limit is multiplied by
  ``decrease_factor`` (floored, never below min). The key is the sending IP's towards the
  group when the signal names an IP: providers rate-limit and block per sending IP and
  say so, and a new or weaker IP must not hold back the others. It is the group/domain
  key for a signal with no IP, and for the default group (whose IP key adds up every
  small domain);
- a reputation record of a key with volume >= ``min_volume`` (attempts; deliveries
  for complaints) whose rate reaches a *suspend* threshold suspends the key for
  ``suspend_s``; one that reaches a *throttle* threshold lowers it as above (not for
  ``ip_group:<ip>|default``, which adds up every small domain: their domain keys are
  judged instead, so one bad small domain cannot hold back the others);
- automation rules (``automation.py``) matching the reply: ``throttle_down`` lowers,
  ``set_limit`` sets limits (clamped to [min, max]) and holds them for the rule's
  duration, ``suspend`` suspends for the rule's duration. ip_group-scoped rules act on
  the IP x group key, or on the group/domain key when the signal has no IP.

Anti-flapping: a key changes at most once per ``adjust_interval_s``; escalation to
suspended and explicit ``set_limit`` rules apply at once (their own trigger and
duration bound them). While a key is suspended, further negative feedback is noted
(it delays the next increase) but changes nothing.

Positive feedback (``tick``): once ``quiet_interval_s`` has passed since both the
last negative feedback and the last change (and any ``set_limit`` hold is over),
every limit rises by ``increase_step`` x its baseline (at least 1), up to max, provided
the key delivered in at least half as many distinct minutes as the quiet interval has
since its last change: an idle key (between campaigns, overnight) has no evidence that a
higher limit is safe, nor has a burst of a minute or two, which a provider's reserve
absorbs; so a key keeps what it learned until it is used again.
max > baseline: baseline is where a key starts, max is headroom a clean record earns.

Suspensions end on time (``tick``, or the next signal of the key): the key resumes
one multiplicative step below where it was, as "backoff", and waits a quiet interval
before climbing again.

Warm-up: IPs given in ``warmup_ips`` (ip → warm-up start, ms) get an ip_group key per
group with mode "warmup" whose published rate is min(AIMD rate, the group's warm-up
cap for the current day); warm-up caps may be below the group's min.

Modes: suspended > warmup > backoff (a limit below baseline) > normal.

Time alone changes a key only at known instants: its suspension's end, its next climb
step (a quiet interval after its last change or negative feedback, and its hold over,
once it has the active minutes a climb needs: until then only a signal can make it due),
a warm-up day boundary, an automation hit leaving its trigger period. ``next_due`` names
the earliest of them, so the caller can leave out the ticks before it: they would change
nothing, and a jump of months in event time costs a few ticks instead of millions.

State: only keys that published a change or count automation hits hold state
(``KeyState``); such keys are kept (never evicted) so that their versions keep rising.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streams.domain.control.automation import LIMIT_FIELDS, AutomationRule, TriggerCounter
from streams.domain.control.mx_rules import DEFAULT_GROUP, GroupRules, MxRules
from streams.domain.control.reputation import ReputationBook, ReputationRecord, Signal
from streams.domain.control.throttle_state import KeyState, Mode, SettingScope, ThrottleSetting

DAY_MS = 86_400_000
_REPLY_CHARS = 120
# Share of a quiet interval that must have had deliveries (minutes with at least one)
# since a key's last change before it steps up.
CLIMB_ACTIVE_SHARE = 0.5


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def main_key(signal: Signal) -> tuple[SettingScope, str]:
    if signal.group == DEFAULT_GROUP:
        return "domain", f"domain:{signal.domain}"
    return "group", f"group:{signal.group}"


def _pct(x: float) -> str:
    return f"{x * 100:.2f}".rstrip("0").rstrip(".") + "%"


class ThrottleController:
    def __init__(
        self,
        rules: MxRules,
        automation: Sequence[AutomationRule] | None = None,
        warmup_ips: Mapping[str, int] | None = None,
    ) -> None:
        self.rules = rules
        self.automation = list(rules.automation if automation is None else automation)
        self.warmup_ips = dict(warmup_ips or {})
        self._states: dict[str, KeyState] = {}
        # A lower bound of the instant at which a tick could next change a state (None:
        # never, until a signal), or stale (``_due_known`` False) after a restore.
        self._due: int | None = None
        self._due_known = True

    # --- public API -------------------------------------------------------------------

    def on_signal(
        self,
        signal: Signal,
        reputation: Iterable[ReputationRecord] | ReputationBook = (),
        skip: frozenset[str] = frozenset(),
    ) -> list[ThrottleSetting]:
        """React to one signal. ``reputation`` is either the records ``ReputationBook.add``
        returned for it, or the book itself (the signal's keys are then judged on their
        current windows; with records alone a threshold crossing is seen when the book
        emits, at the latest at the next bucket boundary). Keys in ``skip`` took the
        signal in already (a redelivery): they are left as they are."""
        now = signal.time_ms
        scope, key = main_key(signal)
        ip_key = f"ip_group:{signal.sending_ip}|{signal.group}" if signal.sending_ip else None
        if isinstance(reputation, ReputationBook):
            snapshots = (reputation.snapshot(k) for k in (key, ip_key) if k)
            reputation = [r for r in snapshots if r is not None]
        touched: dict[str, KeyState] = {}

        def state(k: str, s: SettingScope) -> KeyState:
            st = touched.get(k)
            if st is None:
                st = self._state(k, s, signal.group, now)
                # A detached copy takes a skipped key's part, and is dropped.
                touched[k] = KeyState.from_dict(st.to_dict()) if k in skip else st
            return touched[k]

        def ip_or_main(on_ip: bool) -> KeyState:
            """The IP x group key when asked for and the signal names an IP, else the main."""
            return state(ip_key, "ip_group") if on_ip and ip_key else state(key, scope)

        if ip_key and signal.sending_ip in self.warmup_ips:
            state(ip_key, "ip_group")
        if signal.outcome == "delivered":
            minute = now // 60_000
            for k, s in ((key, scope), (ip_key, "ip_group")):
                if k and k in self._states:
                    st = state(k, s)  # type: ignore[arg-type]
                    if st.active_minute != minute:
                        st.active_minute = minute
                        st.active_minutes += 1
        for record in reputation:
            if record.key == key:
                self._judge(state(key, scope), record, now)
            elif record.key == ip_key and signal.group != DEFAULT_GROUP:
                # The default group's IP key adds up every small domain: judging it would
                # let one bad small domain slow all the others (their domain keys judge).
                self._judge(state(ip_key, "ip_group"), record, now)
        if signal.reply:
            for rule in self.automation:
                if rule.matches(signal.reply, signal.domain, signal.group):
                    st = ip_or_main(rule.scope == "ip_group")
                    self._automate(st, rule, signal.reply, now)
        if signal.outcome in ("rate_limit", "block"):
            # Not the default group's IP key: it adds up every small domain.
            self._negative_signal(ip_or_main(signal.group != DEFAULT_GROUP), signal, now)
        out = []
        for st in touched.values():
            if st.key in skip:
                continue
            setting = self._publish(st, now)
            if setting:
                out.append(setting)
            # Keys still at baseline with nothing to remember cost no state.
            if st.version or st.counters:
                self._states.setdefault(st.key, st)
                self._due = _earliest(self._due, self._state_due(st, now))
        return out

    def tick(self, now_ms: int) -> list[ThrottleSetting]:
        """End suspensions on time, step up quiet healthy keys, follow warm-up days."""
        out = []
        due: int | None = None
        for st in self._states.values():
            if st.as_of_ms is not None and now_ms <= st.as_of_ms:
                due = _earliest(due, self._state_due(st, st.as_of_ms))
                continue
            g = self.rules.group(st.group)
            self._resume_if_due(st, g, now_ms)
            # The warm-up schedule, not AIMD, governs growth while it lasts.
            if st.suspended_until is None and self._warmup_cap(st, now_ms) is None:
                self._increase_if_quiet(st, g, now_ms)
            for name, counter in list(st.counters.items()):
                rule = self._rule(name)
                if rule is not None:
                    counter.prune(rule, now_ms)
                if rule is None or not counter.hits:
                    del st.counters[name]
            setting = self._publish(st, now_ms)
            if setting:
                out.append(setting)
            due = _earliest(due, self._state_due(st, now_ms))
        self._due, self._due_known = due, True
        return out

    def next_due(self, at_ms: int) -> int | None:
        """The earliest instant at or after ``at_ms`` at which ``tick`` could change a
        state or publish a setting (it may change nothing even then); None when no tick
        can before the next signal. Ticks before it may be left out."""
        if not self._due_known:
            due: int | None = None
            for st in self._states.values():
                due = _earliest(due, self._state_due(st, at_ms - 1))
            self._due, self._due_known = due, True
        return None if self._due is None else max(self._due, at_ms)

    def setting(self, key: str) -> ThrottleSetting | None:
        st = self._states.get(key)
        return None if st is None or not st.version else self._setting(st)

    def settings_off_baseline(self) -> list[ThrottleSetting]:
        out = []
        for st in self._states.values():
            baseline = self._baseline_snapshot(st)
            if st.version and st.published != baseline:
                out.append(self._setting(st))
        return out

    def state(self, key: str) -> KeyState | None:
        return self._states.get(key)

    def restore(self, state: KeyState) -> None:
        self._states[state.key] = state
        self._due_known = False

    def size(self) -> int:
        return len(self._states)

    # --- feedback ---------------------------------------------------------------------

    def _state(self, key: str, scope: SettingScope, group: str, now: int) -> KeyState:
        st = self._states.get(key)
        if st is None:
            g = self.rules.group(group)
            st = KeyState(
                key=key,
                scope=scope,
                group=group,
                max_rate_per_hour=g.max_rate_per_hour.baseline,
                max_connections=g.max_connections.baseline,
                max_messages_per_connection=g.max_messages_per_connection.baseline,
                retry_interval_s=g.retry_interval_s,
            )
            st.published = self._baseline_snapshot(st)
            ip = key.removeprefix("ip_group:").partition("|")[0] if scope == "ip_group" else None
            if ip in self.warmup_ips:
                st.warmup_start_ms = self.warmup_ips[ip]
                st.reason = f"warm-up of new IP {ip}"
        self._resume_if_due(st, self.rules.group(st.group), now)
        return st

    def _judge(self, st: KeyState, rec: ReputationRecord, now: int) -> None:
        g = self.rules.group(st.group)
        t, r = g.thresholds, rec.rates
        window = f"{rec.window_ms // 60000} min window"
        by_attempts = rec.attempts >= g.min_volume
        by_delivered = rec.delivered >= g.min_volume
        checks = (
            (by_attempts, r.invalid, t.invalid_suspend, t.invalid_throttle, "invalid-recipient"),
            (by_delivered, r.complaint, t.complaint_suspend, t.complaint_throttle, "complaint"),
            (by_attempts, r.block, t.block_suspend, t.block_throttle, "block"),
        )
        for enough, rate, suspend_at, throttle_at, label in checks:
            if not enough:
                continue
            volume = f"n={rec.attempts}, {window}"
            if rate >= suspend_at:
                why = f"{label} rate {_pct(rate)} >= {_pct(suspend_at)} ({volume})"
                self._suspend(st, g.suspend_s, why, now)
                return
            if rate >= throttle_at:
                why = f"{label} rate {_pct(rate)} >= {_pct(throttle_at)} ({volume})"
                self._decrease(st, g, why, now)
                return

    def _negative_signal(self, st: KeyState, signal: Signal, now: int) -> None:
        g = self.rules.group(st.group)
        q = signal.qualification
        what = "rate-limit" if signal.outcome == "rate_limit" else "block"
        rule = f", rule {q.rule}" if q else ""
        reply = (signal.reply or "")[:_REPLY_CHARS]
        self._decrease(st, g, f"{what} reply {reply!r}{rule}", now)

    def _automate(self, st: KeyState, rule: AutomationRule, reply: str, now: int) -> None:
        counter = st.counters.setdefault(rule.name, TriggerCounter())
        if not counter.hit(rule, now):
            return
        if not counter.hits:
            del st.counters[rule.name]
        g = self.rules.group(st.group)
        why = f"automation rule {rule.name!r} matched {reply[:_REPLY_CHARS]!r}"
        for action in rule.actions:
            if action.kind == "suspend":
                self._suspend(st, rule.duration_s, why, now)
            elif action.kind == "throttle_down":
                self._decrease(st, g, why, now)
            else:
                self._set_limits(st, g, action.limits, rule.duration_s, why, now)

    # --- state changes ----------------------------------------------------------------

    def _suspend(self, st: KeyState, duration_s: int, why: str, now: int) -> None:
        st.last_negative_ms = now
        if st.suspended_until is not None:
            return
        st.suspended_until = now + duration_s * 1000
        st.reason = f"suspended for {duration_s // 60} min: {why}"
        st.changed_at = now

    def _decrease(self, st: KeyState, g: GroupRules, why: str, now: int) -> None:
        st.last_negative_ms = now
        if st.suspended_until is not None or self._too_soon(st, g, now):
            return
        before = self._values(st)
        self._scale_down(st, g)
        if self._values(st) != before:
            st.reason = f"{why}: rate {before[0]} -> {st.max_rate_per_hour}/h"
            st.changed_at = now

    def _set_limits(
        self,
        st: KeyState,
        g: GroupRules,
        limits: Iterable[tuple[str, int]],
        duration_s: int,
        why: str,
        now: int,
    ) -> None:
        st.last_negative_ms = now
        if st.suspended_until is not None:
            return
        st.hold_until_ms = max(st.hold_until_ms or 0, now + duration_s * 1000)
        parts = []
        for name, value in limits:
            new = getattr(g, name).clamp(value)
            if new != getattr(st, name):
                parts.append(f"{name} {getattr(st, name)} -> {new}")
                setattr(st, name, new)
        if parts:
            st.reason = f"{why}: {', '.join(parts)} for {duration_s // 60} min"
            st.changed_at = now

    def _resume_if_due(self, st: KeyState, g: GroupRules, now: int) -> None:
        if st.suspended_until is None or now < st.suspended_until:
            return
        until = st.suspended_until
        st.suspended_until = None
        self._scale_down(st, g)
        st.reason = f"suspension ended at {until}; resuming at {st.max_rate_per_hour}/h"
        st.last_negative_ms = max(st.last_negative_ms or until, until)
        st.changed_at = now

    def _increase_if_quiet(self, st: KeyState, g: GroupRules, now: int) -> None:
        quiet = g.quiet_interval_s * 1000
        last = max(st.last_negative_ms or 0, st.changed_at or 0)
        if now - last < quiet or now < (st.hold_until_ms or 0) or not self._used(st, g):
            return
        before = self._values(st)
        for name in LIMIT_FIELDS:
            limit = getattr(g, name)
            step = max(1, round(limit.baseline * g.increase_step))
            setattr(st, name, min(limit.max, getattr(st, name) + step))
        if self._values(st) != before:
            minutes = g.quiet_interval_s // 60
            st.reason = f"healthy for {minutes} min: rate {before[0]} -> {st.max_rate_per_hour}/h"
            st.changed_at = now

    @staticmethod
    def _used(st: KeyState, g: GroupRules) -> bool:
        """Whether the key delivered through enough of the time since its last change to
        earn a step up: an idle key (between campaigns, overnight) has no evidence that a
        higher limit is safe, and neither has a burst of a minute or two, which a
        provider's reserve absorbs."""
        return st.active_minutes * 60 >= CLIMB_ACTIVE_SHARE * g.quiet_interval_s

    def _too_soon(self, st: KeyState, g: GroupRules, now: int) -> bool:
        return st.changed_at is not None and now - st.changed_at < g.adjust_interval_s * 1000

    def _state_due(self, st: KeyState, now: int) -> int | None:
        """The earliest instant after ``now`` at which ``tick`` could change ``st``, which
        is up to date at ``now``; None for never (until a signal). Erring early is safe."""
        soon = now + 1
        if st.published != self._snapshot(st, now):
            return soon
        due: int | None = None
        for name, counter in st.counters.items():
            rule = self._rule(name)
            if rule is None or not counter.hits:
                return soon
            due = _earliest(due, counter.hits[0] + rule.trigger_period_s * 1000)
        if st.suspended_until is not None:
            due = _earliest(due, st.suspended_until)
        elif self._warmup_cap(st, now) is not None and st.warmup_start_ms is not None:
            # The cap, and the mode when warm-up ends, change on day boundaries only.
            start = st.warmup_start_ms
            due = _earliest(due, start + ((now - start) // DAY_MS + 1) * DAY_MS)
        else:
            g = self.rules.group(st.group)
            if self._used(st, g) and any(getattr(st, n) < getattr(g, n).max for n in LIMIT_FIELDS):
                last = max(st.last_negative_ms or 0, st.changed_at or 0)
                climb = max(last + g.quiet_interval_s * 1000, st.hold_until_ms or 0)
                due = _earliest(due, climb)
        return None if due is None else max(soon, due)

    def _rule(self, name: str) -> AutomationRule | None:
        return next((r for r in self.automation if r.name == name), None)

    # --- publishing -------------------------------------------------------------------

    def _mode(self, st: KeyState, now: int) -> tuple[Mode, int]:
        """Mode and effective rate (warm-up caps the rate)."""
        if st.suspended_until is not None:
            return "suspended", st.max_rate_per_hour
        cap = self._warmup_cap(st, now)
        if cap is not None:
            return "warmup", min(cap, st.max_rate_per_hour)
        g = self.rules.group(st.group)
        below = any(getattr(st, n) < getattr(g, n).baseline for n in LIMIT_FIELDS)
        return ("backoff" if below else "normal"), st.max_rate_per_hour

    def _warmup_cap(self, st: KeyState, now: int) -> int | None:
        if st.warmup_start_ms is None:
            return None
        day = (now - st.warmup_start_ms) // DAY_MS + 1
        return self.rules.group(st.group).warmup_cap(max(1, day))

    def _snapshot(self, st: KeyState, now: int) -> list[Any]:
        mode, rate = self._mode(st, now)
        return [
            mode,
            rate,
            st.max_connections,
            st.max_messages_per_connection,
            st.retry_interval_s,
            st.suspended_until,
        ]

    def _baseline_snapshot(self, st: KeyState) -> list[Any]:
        g = self.rules.group(st.group)
        return [
            "normal",
            g.max_rate_per_hour.baseline,
            g.max_connections.baseline,
            g.max_messages_per_connection.baseline,
            g.retry_interval_s,
            None,
        ]

    @staticmethod
    def _values(st: KeyState) -> tuple[int, int, int]:
        return st.max_rate_per_hour, st.max_connections, st.max_messages_per_connection

    @staticmethod
    def _scale_down(st: KeyState, g: GroupRules) -> None:
        for name in LIMIT_FIELDS:
            limit = getattr(g, name)
            setattr(st, name, limit.clamp(int(getattr(st, name) * g.decrease_factor)))

    def _publish(self, st: KeyState, now: int) -> ThrottleSetting | None:
        snapshot = self._snapshot(st, now)
        if snapshot == st.published:
            return None
        st.published = snapshot
        st.version += 1
        st.active_minutes = 0
        st.changed_at = now
        return self._setting(st)

    def _setting(self, st: KeyState) -> ThrottleSetting:
        mode, rate, conns, msgs, retry, until = st.published or self._baseline_snapshot(st)
        return ThrottleSetting(
            key=st.key,
            scope=st.scope,
            mode=mode,
            max_rate_per_hour=rate,
            max_connections=conns,
            max_messages_per_connection=msgs,
            retry_interval_s=retry,
            suspended_until=until,
            reason=st.reason,
            version=st.version,
            changed_at=st.changed_at if st.changed_at is not None else 0,
        )
