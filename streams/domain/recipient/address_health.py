"""Address health (Campaign quarantine rules), keyed by recipient address.

Rules, all thresholds in ``QuarantinePolicy``:

- A hard error (sync/async bounce qualified ``hard``) quarantines at once; the first
  quarantine reason is kept.
- A soft error (bounce qualified ``soft`` or ``undefined``, a deferral carrying
  such a qualification, an expiry) counts only when it comes at least 24 h after the
  last counted one; the 5th counted error quarantines. Rate-limit replies are the
  sender's fault, not the address's, and count for nothing.
- While ``with_errors``, the count resets after 10 days without any error, and on a
  success (``send/delivered``). A quarantine is not lifted by a success.
- A quarantine whose reason is ``Mailbox full`` lifts 30 days after it began
  (evaluated against the clock, so also without new events).
- A complaint denylists; ``denylisted`` is terminal for the MTA's facts. ``ignored``
  replies, unqualified bounces and relays change nothing.
- An operator's action (family ``operator``) at event time T overrides every earlier
  fact of the address: ``lift`` and ``undenylist`` make it ``valid`` with no error
  counted, ``denylist`` makes it ``denylisted``, whatever the state was; the reason is
  the operator's, or ``Lifted by operator`` / ``Undenylisted by operator`` /
  ``Denylisted by operator``. Facts after T apply on top as usual (the next soft error
  counts at once); facts before T that arrive late are ignored. Ties at equal times go by
  ``(event_time, event_id)``, as everywhere here.

States: ``valid``, ``with_errors``, ``quarantined``, ``denylisted``.

Order independence: the 24 h spacing makes the rules order-sensitive, so the state
keeps the relevant facts (hard, soft, success, complaint) as entries sorted by
``(event_time, event_id)`` and recomputes the health by folding them in event-time
order from a snapshot; a duplicate (same key) is a no-op. Entries older than
``horizon_s`` before the newest event time seen, and the oldest entries beyond
``max_entries``, are folded into the snapshot, which remembers the key of the last
entry it absorbed (its watermark). The state therefore never holds more than
``max_entries`` entries. An operator's action does not depend on what came before it,
so it becomes the snapshot at once, its key the watermark, and the entries before it
are dropped; the snapshot remembers the key of the newest action, and every fact at or
before it (a late one, or a repeat of the action) is ignored, exactly.

Limit: the result is exactly order independent for events no older than the
watermark. An event older than the watermark (more than ``horizon_s`` late, or
behind ``max_entries`` newer facts) is applied to the snapshot if it is a hard error
or a complaint (absorbing facts; a duplicate of one already folded is a no-op,
except that it re-quarantines an address whose ``Mailbox full`` quarantine from that
same hard error already lifted) and dropped if it is a soft error or a success
(newer facts supersede it). An operator's action that late (but newer than the last
action) replaces the snapshot: the facts between its time and the watermark, already
folded, are lost, while the entries after the watermark still apply on top; an
explicit decision is never dropped.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, replace
from typing import Any, Literal

from streams.domain.events import OPERATOR, OPERATOR_KINDS, is_remote_verdict
from streams.domain.types import Qualification

HealthState = Literal["valid", "with_errors", "quarantined", "denylisted"]
VALID: HealthState = "valid"
WITH_ERRORS: HealthState = "with_errors"
QUARANTINED: HealthState = "quarantined"
DENYLISTED: HealthState = "denylisted"
COMPLAINT_REASON = "Complaint"
UNREACHABLE = "Unreachable"

# Operator actions ("lift", "denylist", "undenylist") are never kept as entries: each
# becomes the snapshot (see the module docstring).
EntryKind = Literal["hard", "soft", "success", "complaint", "lift", "denylist", "undenylist"]
OPERATOR_REASONS: dict[str, str] = {
    "lift": "Lifted by operator",
    "denylist": "Denylisted by operator",
    "undenylist": "Undenylisted by operator",
}

_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class QuarantinePolicy:
    soft_spacing_s: int = _DAY_S
    soft_threshold: int = 5
    reset_after_s: int = 10 * _DAY_S
    mailbox_full_lift_s: int = 30 * _DAY_S
    mailbox_full_reason: str = "Mailbox full"
    # Default: reset period + spacing x threshold, the span over which the soft
    # error rules look back.
    horizon_s: int = 15 * _DAY_S
    max_entries: int = 100


@dataclass(frozen=True, slots=True)
class Health:
    """The folded health at the time of the last fact applied."""

    state: HealthState = VALID
    error_count: int = 0
    reason: str | None = None
    last_counted_at: int | None = None
    last_error_at: int | None = None
    last_success_at: int | None = None
    quarantined_at: int | None = None
    denylisted_at: int | None = None
    # The newest operator action folded in: no fact at or before its key counts any more.
    operator_at: int | None = None
    operator_event_id: str | None = None

    @property
    def operator_key(self) -> tuple[int, str] | None:
        if self.operator_at is None or self.operator_event_id is None:
            return None
        return (self.operator_at, self.operator_event_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "error_count": self.error_count,
            "reason": self.reason,
            "last_counted_at": self.last_counted_at,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
            "quarantined_at": self.quarantined_at,
            "denylisted_at": self.denylisted_at,
            "operator_at": self.operator_at,
            "operator_event_id": self.operator_event_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Health:
        return cls(**d)


@dataclass(frozen=True, slots=True)
class Entry:
    time: int
    event_id: str
    kind: EntryKind
    reason: str | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.time, self.event_id)


@dataclass(frozen=True, slots=True)
class AddressState:
    """Snapshot + bounded, time-sorted recent entries (see module docstring).

    ``current`` is the fold of all entries and ``resets_at`` the time at which the
    clock alone returns it to ``valid`` (10 days without error, or a Mailbox full
    quarantine lifting): both are derived with the policy at ``apply`` so that
    ``view`` needs only the clock.
    """

    snapshot: Health = Health()
    watermark: tuple[int, str] | None = None
    entries: tuple[Entry, ...] = ()
    max_seen: int | None = None
    current: Health = Health()
    resets_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot.to_dict(),
            "watermark": None if self.watermark is None else list(self.watermark),
            "entries": [[e.time, e.event_id, e.kind, e.reason] for e in self.entries],
            "max_seen": self.max_seen,
            "current": self.current.to_dict(),
            "resets_at": self.resets_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AddressState:
        wm = d["watermark"]
        return cls(
            snapshot=Health.from_dict(d["snapshot"]),
            watermark=None if wm is None else (int(wm[0]), str(wm[1])),
            entries=tuple(Entry(int(t), str(i), k, r) for t, i, k, r in d["entries"]),
            max_seen=d["max_seen"],
            current=Health.from_dict(d["current"]),
            resets_at=d["resets_at"],
        )


@dataclass(frozen=True, slots=True)
class AddressView:
    state: HealthState
    error_count: int
    reason: str | None
    quarantined_at: int | None
    last_error_at: int | None
    last_success_at: int | None
    denylisted_at: int | None
    # When a Mailbox full quarantine lifts by itself (None for other states/reasons).
    lifts_at: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "error_count": self.error_count,
            "reason": self.reason,
            "quarantined_at": self.quarantined_at,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
            "denylisted_at": self.denylisted_at,
            "lifts_at": self.lifts_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AddressView:
        return cls(**d)


def _entry(family: str, event: dict[str, Any], q: Qualification | None) -> Entry | None:
    """The fact an event contributes to address health, if any."""
    t = int(event["event_time"])
    event_id = str(event["event_id"])
    kind = event["kind"]
    if family == OPERATOR:
        if kind not in OPERATOR_KINDS:
            raise ValueError(f"unknown operator action {kind!r}")
        return Entry(t, event_id, kind, event.get("reason") or OPERATOR_REASONS[kind])
    if family not in ("send", "bounce", "retry"):
        raise ValueError(f"unknown event family {family!r}")
    if not is_remote_verdict(event):
        return None
    if family == "send":
        return Entry(t, event_id, "success") if kind == "delivered" else None
    if family == "bounce" and kind == "complaint":
        return Entry(t, event_id, "complaint", COMPLAINT_REASON)
    if family == "retry" and kind == "expired" and q is None:
        return Entry(t, event_id, "soft", UNREACHABLE)
    if q is None or q.failure_type == "ignored" or q.rate_limit:
        return None
    if family == "bounce" and q.failure_type == "hard":
        return Entry(t, event_id, "hard", q.failure_reason)
    # Deferrals and expiries are transient by nature: even a "hard" reply counts soft.
    return Entry(t, event_id, "soft", q.failure_reason)


def _resets_at(h: Health, policy: QuarantinePolicy) -> int | None:
    """When the clock alone returns ``h`` to valid, if ever."""
    if h.state == QUARANTINED and h.reason == policy.mailbox_full_reason:
        assert h.quarantined_at is not None
        return h.quarantined_at + policy.mailbox_full_lift_s * 1000
    if h.state == WITH_ERRORS and h.last_error_at is not None:
        return h.last_error_at + policy.reset_after_s * 1000
    return None


def _reset(h: Health, **also: Any) -> Health:
    return replace(
        h,
        state=VALID,
        error_count=0,
        reason=None,
        last_counted_at=None,
        quarantined_at=None,
        **also,
    )


def _advance(h: Health, t: int, resets_at: int | None) -> Health:
    return _reset(h) if resets_at is not None and t >= resets_at else h


def _later(a: int | None, b: int) -> int:
    return b if a is None else max(a, b)


def _override(e: Entry) -> Health:
    """An operator's action: the address starts afresh from it, whatever came before."""
    fresh = Health(reason=e.reason, operator_at=e.time, operator_event_id=e.event_id)
    if e.kind == "denylist":
        return replace(fresh, state=DENYLISTED, denylisted_at=e.time)
    return fresh


def _step(h: Health, e: Entry, policy: QuarantinePolicy) -> Health:
    h = _advance(h, e.time, _resets_at(h, policy))
    if h.state == DENYLISTED:
        return h
    if e.kind == "complaint":
        return replace(h, state=DENYLISTED, denylisted_at=e.time, reason=e.reason)
    # One new Health per fact (it runs for every entry folded).
    if e.kind == "success":
        last_success = _later(h.last_success_at, e.time)
        if h.state == WITH_ERRORS:
            return _reset(h, last_success_at=last_success)
        return replace(h, last_success_at=last_success)
    last_error = _later(h.last_error_at, e.time)
    if h.state == QUARANTINED:
        return replace(h, last_error_at=last_error)
    if e.kind == "hard":
        return replace(
            h, last_error_at=last_error, state=QUARANTINED, quarantined_at=e.time, reason=e.reason
        )
    spaced = h.last_counted_at is None or e.time >= h.last_counted_at + policy.soft_spacing_s * 1000
    if not spaced:
        return replace(h, last_error_at=last_error, reason=e.reason)
    count = h.error_count + 1
    if count >= policy.soft_threshold:
        return replace(
            h,
            last_error_at=last_error,
            state=QUARANTINED,
            error_count=count,
            last_counted_at=e.time,
            quarantined_at=e.time,
            reason=e.reason,
        )
    return replace(
        h,
        last_error_at=last_error,
        state=WITH_ERRORS,
        error_count=count,
        last_counted_at=e.time,
        reason=e.reason,
    )


def apply(
    state: AddressState | None,
    family: str,
    event: dict[str, Any],
    q: Qualification | None,
    policy: QuarantinePolicy,
) -> AddressState:
    """Record one event (``family`` is send, bounce, retry or operator) for its recipient."""
    s = AddressState() if state is None else state
    t = int(event["event_time"])
    max_seen = t if s.max_seen is None else max(s.max_seen, t)
    snapshot, watermark, entries, current = s.snapshot, s.watermark, s.entries, s.current
    e = _entry(family, event, q)
    overridden = snapshot.operator_key
    if e is not None and overridden is not None and e.key <= overridden:
        e = None  # before the newest operator action, or a repeat of it
    refold = False
    if e is not None and e.kind in OPERATOR_KINDS:
        # Past the watermark, the action overrides everything before it and becomes the
        # snapshot; behind it (see the limit in the module docstring), the snapshot.
        snapshot = _override(e)
        if watermark is None or e.key > watermark:
            watermark = e.key
            entries = tuple(x for x in entries if x.key > e.key)
        refold = True
    elif e is not None and watermark is not None and e.key <= watermark:
        if e.kind in ("hard", "complaint"):
            snapshot = _step(snapshot, e, policy)
            refold = True
    elif e is not None:
        i = bisect_left(entries, e.key, key=lambda x: x.key)
        if i == len(entries):
            # The common in-order case: one more step on the current fold.
            entries = (*entries, e)
            current = _step(current, e, policy)
        elif entries[i].key != e.key:
            entries = (*entries[:i], e, *entries[i:])
            refold = True
    oldest_kept = max_seen - policy.horizon_s * 1000
    # Moving the oldest entries into the snapshot does not change the fold.
    while entries and (entries[0].time < oldest_kept or len(entries) > policy.max_entries):
        snapshot = _step(snapshot, entries[0], policy)
        watermark = entries[0].key
        entries = entries[1:]
    if refold:
        current = snapshot
        for x in entries:
            current = _step(current, x, policy)
    return AddressState(
        snapshot, watermark, entries, max_seen, current, _resets_at(current, policy)
    )


def health_at(state: AddressState, now_ms: int) -> Health:
    """The folded health at clock ``now_ms`` (never earlier than the newest event)."""
    now = now_ms if state.max_seen is None else max(now_ms, state.max_seen)
    return _advance(state.current, now, state.resets_at)


def view(state: AddressState, now_ms: int) -> AddressView:
    """The address health at clock ``now_ms`` (never earlier than the newest event)."""
    h = health_at(state, now_ms)
    return AddressView(
        state=h.state,
        error_count=h.error_count,
        reason=h.reason,
        quarantined_at=h.quarantined_at,
        last_error_at=h.last_error_at,
        last_success_at=h.last_success_at,
        denylisted_at=h.denylisted_at,
        lifts_at=state.resets_at if h.state == QUARANTINED else None,
    )
