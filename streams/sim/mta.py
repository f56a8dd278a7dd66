"""The simulated MTA: queues per throttle key, token buckets per sending IP, retries, validity.

Lanes: one queue per main throttle key of the pipeline (``group:<g>``, or ``domain:<d>`` for
domains of the default group), served by every IP of the pool. Each (lane, IP) has a token
bucket at the lane's effective rate: the stricter of the main key's setting and the
``ip_group:<ip>|<g>`` setting, read from throttle records exactly as a sender reads the
control topic (``LimitBook``); a suspended key sends nothing until ``suspended_until``.
Per step an IP opens at most ``max_connections`` connections of at most
``max_messages_per_connection`` messages. A suspended IP leaves its share to the other IPs.

Replies: 2xx → ``send/delivered``; 5.1.1 and no-MX → ``bounce/sync`` (hard); other 5xx →
``bounce/sync`` then ``retry/expired`` (the MTA gives up); 4xx → ``retry/deferred`` with the
reply and the next attempt after an exponential backoff (retry interval x 2^(n-1), capped,
with seeded jitter); a connection failure (no SMTP session, as in an outage) is retried the
same way, with the MTA's own diagnostic and no reply code. A message still not delivered
when its validity (requested validity capped at 3.5 days, or the MTA's ``validity_s``) ends
gets ``retry/expired``.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.domain.control.mx_rules import DEFAULT_GROUP, GroupRules, MxRules
from streams.sim.campaign import Recipient
from streams.sim.providers import Outcome, ProviderNetwork, Reply

Event = tuple[str, dict[str, Any]]  # (family, event)

DAY_S = 86_400
MAX_VALIDITY_S = DAY_S * 7 // 2
REQUESTED_VALIDITY_S = 5 * DAY_S  # Campaign's default; the MTA caps it at 3.5 days
MAX_BACKOFF_S = 4 * 3600
NO_MX = Reply(
    None,
    None,
    "Host or domain name not found. Name service error for name={domain} type=MX: Host not found",
)
# Counters per label and step: attempts, delivered, rate-limit deferrals, other soft, hard.
ATTEMPTS, DELIVERED, DEFERRALS, SOFT, HARD = range(5)


@dataclass(frozen=True, slots=True)
class Limits:
    rate_per_hour: int
    max_connections: int
    max_messages_per_connection: int
    retry_interval_s: int
    suspended_until: int | None = None

    @classmethod
    def baseline(cls, g: GroupRules) -> Limits:
        return cls(
            g.max_rate_per_hour.baseline,
            g.max_connections.baseline,
            g.max_messages_per_connection.baseline,
            g.retry_interval_s,
        )

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Limits:
        return cls(
            int(rec["max_rate_per_hour"]),
            int(rec["max_connections"]),
            int(rec["max_messages_per_connection"]),
            int(rec["retry_interval_s"]),
            rec.get("suspended_until"),
        )

    def stricter(self, other: Limits) -> Limits:
        until = [u for u in (self.suspended_until, other.suspended_until) if u is not None]
        return Limits(
            min(self.rate_per_hour, other.rate_per_hour),
            min(self.max_connections, other.max_connections),
            min(self.max_messages_per_connection, other.max_messages_per_connection),
            max(self.retry_interval_s, other.retry_interval_s),
            max(until) if until else None,
        )

    def suspended(self, now_ms: int) -> bool:
        return self.suspended_until is not None and now_ms < self.suspended_until


class LimitBook:
    """Effective limits per (main key, IP). ``records`` are the newest throttle records by
    key (adaptive); None means the fixed baselines of the MX rules (static)."""

    def __init__(self, rules: MxRules, records: Mapping[str, Mapping[str, Any]] | None) -> None:
        self.rules = rules
        self.records = records

    def limits(self, key: str, group: str, ip: str) -> Limits:
        base = Limits.baseline(self.rules.group(group))
        if self.records is None:
            return base
        main = self.records.get(key)
        lim = Limits.from_record(main) if main is not None else base
        ip_rec = self.records.get(f"ip_group:{ip}|{group}")
        return lim if ip_rec is None else lim.stricter(Limits.from_record(ip_rec))


@dataclass(slots=True)
class Message:
    recipient: Recipient
    message_id: str
    lane: str
    mx_host: str | None
    deadline_ms: int
    attempts: int = 0
    soft_failures: int = 0
    done: bool = False
    queued: bool = False  # waiting in its lane (not when no retry fits in its validity)


@dataclass
class Lane:
    key: str  # main throttle key
    group: str
    label: str  # provider label for reports
    heap: list[tuple[int, int, Message]] = field(default_factory=list)
    tokens: dict[str, tuple[float, int]] = field(default_factory=dict)  # ip → (tokens, at ms)
    queued: int = 0


@dataclass
class MtaTotals:
    attempts: int = 0
    delivered: int = 0
    rate_limited: int = 0
    blocked: int = 0
    mailbox_full: int = 0
    disabled: int = 0
    user_unknown: int = 0
    unknown_domain: int = 0
    expired: int = 0
    complaints: int = 0
    connection_failures: int = 0  # no SMTP session (timeouts): not a reply, not a bounce
    last_delivery_ms: int | None = None

    @property
    def soft_bounces(self) -> int:
        """Attempts answered with a soft (transient or non-address) failure."""
        return self.rate_limited + self.blocked + self.mailbox_full + self.disabled

    @property
    def hard_bounces(self) -> int:
        return self.user_unknown + self.unknown_domain

    @property
    def failed(self) -> int:
        return self.hard_bounces + self.expired


class Mta:
    def __init__(
        self,
        rules: MxRules,
        providers: ProviderNetwork,
        ips: Sequence[str],
        delivery_id: str,
        seed: int,
        step_ms: int = 60_000,
        max_backoff_s: int = MAX_BACKOFF_S,
        validity_s: int = MAX_VALIDITY_S,
    ) -> None:
        self.rules = rules
        self.providers = providers
        self.ips = tuple(ips)
        self.delivery_id = delivery_id
        self.step_ms = step_ms
        self.max_backoff_s = max_backoff_s
        self.validity_s = validity_s
        self.totals = MtaTotals()
        self.last_delivery: dict[str, int] = {}  # label → time of its last delivery (ms)
        self.lanes: dict[str, Lane] = {}
        self._rng = random.Random(f"mta:{seed}")
        self._seq = 0
        self._pending = 0
        self._deadlines: list[tuple[int, int, Message]] = []
        self._later: list[tuple[int, int, Message, str]] = []  # complaints: (t, seq, msg, ip)
        self._no_mx: list[Message] = []
        self._step_rows: dict[str, list[int]] = {}

    # --- submission -------------------------------------------------------------------

    def submit(self, recipients: Sequence[Recipient], now_ms: int) -> list[Event]:
        """Campaign hands the messages over: one ``send/relayed`` each."""
        out = []
        validity_ms = min(REQUESTED_VALIDITY_S, self.validity_s) * 1000
        for r in recipients:
            mid = f"{self.delivery_id}-M{r.index:07d}"
            mx = self.providers.mx_host(r.domain)
            group = self.rules.group_for(r.domain, mx)
            key = f"domain:{r.domain}" if group == DEFAULT_GROUP else f"group:{group}"
            msg = Message(r, mid, key, mx, now_ms + validity_ms)
            self._pending += 1
            out.append(self._event("send", msg, "relayed", now_ms, campaign_id="SIM"))
            if mx is None:
                self._no_mx.append(msg)
                continue
            lane = self.lanes.get(key)
            if lane is None:
                label = self.providers.group_label(r.domain)
                lane = self.lanes[key] = Lane(key, group, label)
            self._push(lane, now_ms, msg)
            heapq.heappush(self._deadlines, (msg.deadline_ms, self._next_seq(), msg))
        return out

    # --- the step ---------------------------------------------------------------------

    def step(self, now_ms: int, book: LimitBook) -> tuple[list[Event], dict[str, list[int]]]:
        """Everything the MTA does in [now, now + step): events and counters per label."""
        self._step_rows = {}
        out: list[Event] = []
        self._expire(now_ms, out)
        self._complaints(now_ms + self.step_ms, out)
        for msg in self._no_mx:
            reply = Reply(None, None, NO_MX.text.replace("{domain}", msg.recipient.domain))
            out.append(self._event("bounce", msg, "sync", now_ms, reply=reply, attempt=1))
            self.totals.unknown_domain += 1
            self._finish(msg)
            self._row("nx")[HARD] += 1
        self._no_mx = []
        for lane in self.lanes.values():
            if lane.heap and lane.heap[0][0] <= now_ms:
                self._dispatch(lane, now_ms, book, out)
        return out, self._step_rows

    def _dispatch(self, lane: Lane, now_ms: int, book: LimitBook, out: list[Event]) -> None:
        allowance: dict[str, int] = {}
        retry_s = self.rules.group(lane.group).retry_interval_s
        for ip in self.ips:
            lim = book.limits(lane.key, lane.group, ip)
            retry_s = max(retry_s, lim.retry_interval_s)
            if lim.suspended(now_ms):
                continue
            per_step = lim.rate_per_hour * self.step_ms / 3_600_000
            tokens, at = lane.tokens.get(ip, (per_step, now_ms - self.step_ms))
            tokens = min(max(per_step, 1.0), tokens + per_step * (now_ms - at) / self.step_ms)
            lane.tokens[ip] = (tokens, now_ms)
            allowance[ip] = min(int(tokens), lim.max_connections * lim.max_messages_per_connection)
        total = sum(allowance.values())
        if not total:
            return
        spacing = self.step_ms // (total + 1)
        ips = [ip for ip in self.ips if allowance.get(ip)]
        sent = 0
        while ips and lane.heap and lane.heap[0][0] <= now_ms:
            _, _, msg = heapq.heappop(lane.heap)
            if msg.done:
                continue
            lane.queued -= 1
            msg.queued = False
            ip = ips[sent % len(ips)]
            sent += 1
            allowance[ip] -= 1
            tokens, at = lane.tokens[ip]
            lane.tokens[ip] = (tokens - 1, at)
            if not allowance[ip]:
                ips.remove(ip)
            self._attempt(lane, msg, ip, now_ms + sent * spacing, retry_s, out)

    def _attempt(
        self, lane: Lane, msg: Message, ip: str, t: int, retry_s: int, out: list[Event]
    ) -> None:
        provider = self.providers.provider(msg.recipient.domain)
        assert provider is not None  # no-MX messages never reach a lane
        outcome, reply = provider.attempt(ip, msg.recipient.truth, t)
        msg.attempts += 1
        row = self._row(lane.label)
        row[ATTEMPTS] += 1
        self.totals.attempts += 1
        common = {"mx_host": msg.mx_host, "sending_ip": ip}
        if outcome is Outcome.DELIVERED:
            row[DELIVERED] += 1
            self.totals.delivered += 1
            self.totals.last_delivery_ms = max(self.totals.last_delivery_ms or t, t)
            self.last_delivery[lane.label] = max(self.last_delivery.get(lane.label, t), t)
            out.append(self._event("send", msg, "delivered", t, **common))
            self._finish(msg)
            if msg.recipient.complains:
                # Feedback loops report a complaint minutes to hours after delivery.
                at = t + self._rng.randrange(5, 180) * 60_000
                heapq.heappush(self._later, (at, self._next_seq(), msg, ip))
            return
        assert reply is not None
        fields = {**common, "reply": reply, "attempt": msg.attempts}
        if outcome is Outcome.USER_UNKNOWN:
            row[HARD] += 1
            self.totals.user_unknown += 1
            out.append(self._event("bounce", msg, "sync", t, **fields))
            self._finish(msg)
            return
        if outcome is Outcome.RATE_LIMITED:
            row[DEFERRALS] += 1
            self.totals.rate_limited += 1
        else:
            row[SOFT] += 1
            counter = {
                Outcome.BLOCKED: "blocked",
                Outcome.MAILBOX_FULL: "mailbox_full",
                Outcome.DISABLED: "disabled",
                Outcome.CONNECTION_FAILED: "connection_failures",
            }[outcome]
            setattr(self.totals, counter, getattr(self.totals, counter) + 1)
        if reply.code is not None and reply.code >= 500:
            # A permanent reply that does not condemn the address: the MTA gives up.
            out.append(self._event("bounce", msg, "sync", t, **fields))
            out.append(self._event("retry", msg, "expired", t, attempt=msg.attempts))
            self.totals.expired += 1
            self._finish(msg)
            return
        msg.soft_failures += 1
        backoff_s = min(retry_s * 2 ** (msg.soft_failures - 1), self.max_backoff_s)
        due = t + int(backoff_s * 1000 * self._rng.uniform(0.9, 1.1))
        retry = due < msg.deadline_ms
        out.append(
            self._event(
                "retry", msg, "deferred", t, next_attempt_time=due if retry else None, **fields
            )
        )
        if retry:
            self._push(lane, due, msg)

    # --- time -------------------------------------------------------------------------

    def _expire(self, now_ms: int, out: list[Event]) -> None:
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            deadline, _, msg = heapq.heappop(self._deadlines)
            if msg.done:
                continue
            out.append(self._event("retry", msg, "expired", deadline, attempt=msg.attempts))
            self.totals.expired += 1
            if msg.queued:
                self.lanes[msg.lane].queued -= 1
            self._finish(msg)

    def _complaints(self, until_ms: int, out: list[Event]) -> None:
        while self._later and self._later[0][0] < until_ms:
            t, _, msg, ip = heapq.heappop(self._later)
            provider = self.providers.provider(msg.recipient.domain)
            if provider is not None:
                provider.complaint(ip, t)
            out.append(self._event("bounce", msg, "complaint", t, mx_host=msg.mx_host))
            self.totals.complaints += 1

    def next_wake(self, after_ms: int, book: LimitBook) -> int | None:
        """The earliest time >= ``after_ms`` at which the MTA has something to do."""
        if self._no_mx:
            return after_ms
        candidates = []
        while self._deadlines and self._deadlines[0][2].done:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            candidates.append(self._deadlines[0][0])
        if self._later:
            candidates.append(self._later[0][0])
        for lane in self.lanes.values():
            while lane.heap and lane.heap[0][2].done:
                heapq.heappop(lane.heap)
            if not lane.heap:
                continue
            due = lane.heap[0][0]
            limits = [book.limits(lane.key, lane.group, ip) for ip in self.ips]
            open_at = min(lim.suspended_until or 0 for lim in limits)
            candidates.append(max(due, open_at))
        if not candidates:
            return None
        return max(after_ms, min(candidates))

    @property
    def done(self) -> bool:
        return self._pending == 0 and not self._later

    @property
    def pending(self) -> int:
        return self._pending

    def queued(self) -> Iterator[tuple[str, int]]:
        """(label, messages waiting) per lane."""
        for lane in self.lanes.values():
            yield lane.label, lane.queued

    # --- helpers ----------------------------------------------------------------------

    def _row(self, label: str) -> list[int]:
        row = self._step_rows.get(label)
        if row is None:
            row = self._step_rows[label] = [0, 0, 0, 0, 0]
        return row

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _push(self, lane: Lane, due: int, msg: Message) -> None:
        heapq.heappush(lane.heap, (due, self._next_seq(), msg))
        lane.queued += 1
        msg.queued = True

    def _finish(self, msg: Message) -> None:
        msg.done = True
        self._pending -= 1

    def _event(
        self, family: str, msg: Message, kind: str, t: int, reply: Reply | None = None, **extra: Any
    ) -> Event:
        event: dict[str, Any] = {
            "event_id": f"{msg.message_id}-{family}-{kind}-{msg.attempts}",
            "event_time": t,
            "delivery_id": self.delivery_id,
            "message_id": msg.message_id,
            "recipient": msg.recipient.address,
            "kind": kind,
        }
        if reply is not None:
            event.update(smtp_code=reply.code, enhanced_status=reply.status, diagnostic=reply.text)
        event.update(extra)
        return family, event
