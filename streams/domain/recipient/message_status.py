"""Message status (the EFS state machine), keyed by message id.

Rules (Adobe Campaign Enhanced MTA / Email Feedback Service):

- Any MTA event proves the MTA holds the message: status ``taken_into_account``
  (also for a message first seen through a bounce or a retry).
- ``send/delivered`` → ``sent``.
- A hard bounce (qualification ``hard``, bounce kind ``sync`` or ``async``) →
  ``failed`` with type ``hard`` and the rule's reason. A later asynchronous hard
  bounce also turns ``sent`` into ``failed`` (the mailbox bounced later); a
  synchronous one after the delivery changes nothing.
- A soft or undefined bounce, or a deferral carrying a qualification, leaves the
  status unchanged and updates the last error (reason, class, rule); bounces and
  retries raise the attempt count to the highest attempt reported. ``ignored``
  replies only count as attempts; an unqualified bounce is an error without reason.
  A deferral's reply is never a hard failure (the MTA still retries).
- ``retry/expired``, or a clock past the deadline without a success →
  ``failed`` with type ``soft`` and the last error's reason (``Unreachable`` when
  none). Deadline = relayed time (else the first event time) + effective validity;
  effective validity = the requested ``validity_seconds`` (default 5 days) clamped
  to [1 s, 3.5 days]. A delivery whose event time is at or before the deadline is a
  success however late it arrives.
- A complaint leaves the status alone and sets ``complained``.
- The MTA's own doing (``origin`` ``local``): a bounce it decided (an administrative
  bounce, a policy rejection) is a final ``hard`` failure with the text's reason
  (``Refused`` when no rule knows it); a deferral it decided (a message held back by a
  suspension) changes nothing but the attempt count and the times seen.
- Otherwise terminal states do not regress: the earliest terminal fact in event
  time decides (hard bounce, delivery, expiry), except the async hard bounce above.
  A late relayed or deferral changes nothing visible, except that an error before
  the outcome still sets ``has_error`` (in-order processing would have seen it).

Order independence: the state only holds facts merged with commutative,
idempotent operations (min/max of event times, earliest/latest fact by
``(event_time, event_id)``), so any arrival order and any duplication of the same
events give the same state. The visible status is the pure function
``view(state, now_ms)`` of those facts and the clock (the largest event time seen,
given by the caller, never taken below the message's own newest event). The clock
alone changes a view only at ``deadline(state)``, so a caller that re-views the
messages whose deadline the clock passed keeps every view current. The state has a
fixed number of fields whatever the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from streams.domain.types import FailureType, Qualification

# A bounce the MTA decided itself, whose text no bounce rule recognises.
LOCAL_BOUNCE_REASON = "Refused"
LOCAL_BOUNCE_RULE = "mta-local"

MessageStatus = Literal["taken_into_account", "sent", "failed"]
TAKEN_INTO_ACCOUNT: MessageStatus = "taken_into_account"
SENT: MessageStatus = "sent"
FAILED: MessageStatus = "failed"
UNREACHABLE = "Unreachable"

_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class ValidityPolicy:
    """How long the MTA may keep trying a message."""

    default_validity_s: int = 5 * _DAY_S
    max_validity_s: int = 7 * _DAY_S // 2
    min_validity_s: int = 1

    def effective_ms(self, requested_s: int | None) -> int:
        """The validity actually used, in ms: absurd requests are clamped, not rejected,
        because the message is already in the MTA."""
        wanted = self.default_validity_s if requested_s is None else requested_s
        return max(self.min_validity_s, min(wanted, self.max_validity_s)) * 1000


@dataclass(frozen=True, slots=True)
class ErrorFact:
    """One qualified reply, ordered by ``(time, event_id)``."""

    time: int
    event_id: str
    failure_type: FailureType
    reason: str
    bounce_class: int
    rule: str

    @property
    def key(self) -> tuple[int, str]:
        return (self.time, self.event_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "event_id": self.event_id,
            "failure_type": self.failure_type,
            "reason": self.reason,
            "bounce_class": self.bounce_class,
            "rule": self.rule,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ErrorFact:
        return cls(
            time=int(d["time"]),
            event_id=str(d["event_id"]),
            failure_type=d["failure_type"],
            reason=str(d["reason"]),
            bounce_class=int(d["bounce_class"]),
            rule=str(d["rule"]),
        )


def _earliest(a: ErrorFact | None, b: ErrorFact) -> ErrorFact:
    return b if a is None or b.key < a.key else a


def _latest(a: ErrorFact | None, b: ErrorFact) -> ErrorFact:
    return b if a is None or b.key > a.key else a


def _min(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)


@dataclass(slots=True)
class MessageState:
    """Mergeable facts about one message (no recipient address is kept here)."""

    message_id: str
    delivery_id: str
    first_seen: int
    last_seen: int
    validity_ms: int
    # Key of the send event whose validity_seconds set validity_ms (None: default).
    validity_from: tuple[int, str] | None = None
    relayed_at: int | None = None
    delivered_at: int | None = None
    expired_at: int | None = None
    complained_at: int | None = None
    hard_sync: ErrorFact | None = None
    hard_async: ErrorFact | None = None
    last_error: ErrorFact | None = None
    attempts: int = 0
    last_deferral: tuple[int, str] | None = None
    next_attempt_time: int | None = None
    errored: bool = False

    def to_dict(self) -> dict[str, Any]:
        def fact(f: ErrorFact | None) -> dict[str, Any] | None:
            return None if f is None else f.to_dict()

        def key(k: tuple[int, str] | None) -> list[Any] | None:
            return None if k is None else [k[0], k[1]]

        return {
            "message_id": self.message_id,
            "delivery_id": self.delivery_id,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "validity_ms": self.validity_ms,
            "validity_from": key(self.validity_from),
            "relayed_at": self.relayed_at,
            "delivered_at": self.delivered_at,
            "expired_at": self.expired_at,
            "complained_at": self.complained_at,
            "hard_sync": fact(self.hard_sync),
            "hard_async": fact(self.hard_async),
            "last_error": fact(self.last_error),
            "attempts": self.attempts,
            "last_deferral": key(self.last_deferral),
            "next_attempt_time": self.next_attempt_time,
            "errored": self.errored,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MessageState:
        def fact(v: dict[str, Any] | None) -> ErrorFact | None:
            return None if v is None else ErrorFact.from_dict(v)

        def key(v: list[Any] | None) -> tuple[int, str] | None:
            return None if v is None else (int(v[0]), str(v[1]))

        return cls(
            message_id=d["message_id"],
            delivery_id=d["delivery_id"],
            first_seen=d["first_seen"],
            last_seen=d["last_seen"],
            validity_ms=d["validity_ms"],
            validity_from=key(d["validity_from"]),
            relayed_at=d["relayed_at"],
            delivered_at=d["delivered_at"],
            expired_at=d["expired_at"],
            complained_at=d["complained_at"],
            hard_sync=fact(d["hard_sync"]),
            hard_async=fact(d["hard_async"]),
            last_error=fact(d["last_error"]),
            attempts=d["attempts"],
            last_deferral=key(d["last_deferral"]),
            next_attempt_time=d["next_attempt_time"],
            errored=d["errored"],
        )


@dataclass(frozen=True, slots=True)
class MessageView:
    """What EFS shows for one message at a given clock.

    ``failure_*`` describe the failure when ``failed``, the last error while
    ``taken_into_account``, and are None when ``sent``. ``has_error``: at least one
    bounce or error happened (the EFS "bounces + errors" indicator).
    """

    status: MessageStatus
    failure_type: FailureType | None = None
    failure_reason: str | None = None
    bounce_class: int | None = None
    rule: str | None = None
    attempts: int = 0
    next_attempt_time: int | None = None
    complained: bool = False
    has_error: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "failure_type": self.failure_type,
            "failure_reason": self.failure_reason,
            "bounce_class": self.bounce_class,
            "rule": self.rule,
            "attempts": self.attempts,
            "next_attempt_time": self.next_attempt_time,
            "complained": self.complained,
            "has_error": self.has_error,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MessageView:
        return cls(**d)


def _new_state(event: dict[str, Any], policy: ValidityPolicy) -> MessageState:
    t = int(event["event_time"])
    return MessageState(
        message_id=str(event["message_id"]),
        delivery_id=str(event["delivery_id"]),
        first_seen=t,
        last_seen=t,
        validity_ms=policy.effective_ms(None),
    )


def _copy(s: MessageState) -> MessageState:
    # Spelled out: dataclasses.replace reflects over the fields on every event.
    return MessageState(
        s.message_id,
        s.delivery_id,
        s.first_seen,
        s.last_seen,
        s.validity_ms,
        s.validity_from,
        s.relayed_at,
        s.delivered_at,
        s.expired_at,
        s.complained_at,
        s.hard_sync,
        s.hard_async,
        s.last_error,
        s.attempts,
        s.last_deferral,
        s.next_attempt_time,
        s.errored,
    )


def _fact(t: int, event_id: str, q: Qualification, failure_type: FailureType) -> ErrorFact:
    return ErrorFact(t, event_id, failure_type, q.failure_reason, q.bounce_class, q.rule)


def _local_bounce_fact(t: int, event_id: str, q: Qualification | None) -> ErrorFact:
    """The MTA dropped the message itself (administrative bounce, policy rejection): it is
    final whatever the text's qualification says, and the reason is the text's if known."""
    if q is None or q.failure_type in ("undefined", "ignored"):
        return ErrorFact(t, event_id, "hard", LOCAL_BOUNCE_REASON, 0, LOCAL_BOUNCE_RULE)
    return _fact(t, event_id, q, "hard")


def apply(
    state: MessageState | None,
    family: str,
    event: dict[str, Any],
    q: Qualification | None,
    policy: ValidityPolicy,
) -> MessageState:
    """Merge one event (``family`` is send, bounce or retry) into a copy of ``state``."""
    t = int(event["event_time"])
    event_id = str(event["event_id"])
    kind = event["kind"]
    s = _new_state(event, policy) if state is None else _copy(state)
    s.first_seen = min(s.first_seen, t)
    s.last_seen = max(s.last_seen, t)
    attempt = event.get("attempt")
    if attempt is not None:
        s.attempts = max(s.attempts, int(attempt))
    counts_as_error = q is None or q.failure_type != "ignored"
    # The MTA's own doing: a bounce it decided is final; a hold it decided is no error.
    local = event.get("origin") == "local"

    if family == "send":
        requested = event.get("validity_seconds")
        # The earliest send event that states a validity wins, so duplicates or
        # disagreeing send events resolve the same way in any order.
        if requested is not None and (s.validity_from is None or (t, event_id) < s.validity_from):
            s.validity_from = (t, event_id)
            s.validity_ms = policy.effective_ms(int(requested))
        if kind == "relayed":
            s.relayed_at = _min(s.relayed_at, t)
        elif kind == "delivered":
            s.delivered_at = _min(s.delivered_at, t)
        else:
            raise ValueError(f"unknown send kind {kind!r}")
    elif family == "bounce":
        if kind == "complaint":
            s.complained_at = _min(s.complained_at, t)
        elif kind in ("sync", "async"):
            s.errored = s.errored or counts_as_error or local
            if local:
                fact = _local_bounce_fact(t, event_id, q)
                s.hard_sync = _earliest(s.hard_sync, fact)
            elif q is not None and q.failure_type == "hard":
                fact = _fact(t, event_id, q, "hard")
                if kind == "sync":
                    s.hard_sync = _earliest(s.hard_sync, fact)
                else:
                    s.hard_async = _earliest(s.hard_async, fact)
            elif q is not None and counts_as_error:
                s.last_error = _latest(s.last_error, _fact(t, event_id, q, q.failure_type))
        else:
            raise ValueError(f"unknown bounce kind {kind!r}")
    elif family == "retry":
        if kind == "deferred":
            if s.last_deferral is None or (t, event_id) > s.last_deferral:
                s.last_deferral = (t, event_id)
                s.next_attempt_time = event.get("next_attempt_time")
        elif kind == "expired":
            s.expired_at = _min(s.expired_at, t)
        else:
            raise ValueError(f"unknown retry kind {kind!r}")
        if local and kind == "deferred":
            return s
        s.errored = s.errored or counts_as_error
        if q is not None and counts_as_error:
            # The MTA still retries (or gave up on time), so even a "hard" reply is
            # only the last error here, never a hard failure.
            ftype: FailureType = "undefined" if q.failure_type == "undefined" else "soft"
            s.last_error = _latest(s.last_error, _fact(t, event_id, q, ftype))
    else:
        raise ValueError(f"unknown event family {family!r}")
    return s


def _raw_deadline(state: MessageState) -> int:
    anchor = state.relayed_at if state.relayed_at is not None else state.first_seen
    return anchor + state.validity_ms


# Tie-break between terminal facts at the same event time: failure first, then
# delivery, then expiry.
_HARD, _DELIVERED, _EXPIRED = 0, 1, 2


def _terminal_facts(state: MessageState, now_ms: int) -> list[tuple[int, int]]:
    dl = _raw_deadline(state)
    facts: list[tuple[int, int]] = []
    for hard in (state.hard_sync, state.hard_async):
        if hard is not None:
            facts.append((hard.time, _HARD))
    if state.delivered_at is not None and state.delivered_at <= dl:
        facts.append((state.delivered_at, _DELIVERED))
    expiry = state.expired_at
    if now_ms > dl:
        expiry = _min(expiry, dl)
    if expiry is not None:
        facts.append((expiry, _EXPIRED))
    return facts


def deadline(state: MessageState) -> int | None:
    """When the clock alone would fail the message (epoch ms), or None when the clock
    can no longer change its view: facts decide the outcome by that time, or the
    message's own events are already past it. The caller indexes messages by it."""
    dl = _raw_deadline(state)
    if state.last_seen > dl or any(t <= dl for t, _ in _terminal_facts(state, dl)):
        return None
    return dl


def view(state: MessageState, now_ms: int) -> MessageView:
    """The status shown at clock ``now_ms`` (never earlier than the state's own facts)."""
    facts = _terminal_facts(state, max(now_ms, state.last_seen))
    complained = state.complained_at is not None
    first = min(facts)[1] if facts else None
    if first == _DELIVERED and state.hard_async is None:
        return MessageView(
            status=SENT, attempts=state.attempts, complained=complained, has_error=state.errored
        )
    hard = state.hard_async if first == _DELIVERED else None
    if first == _HARD:
        hard = min(
            (f for f in (state.hard_sync, state.hard_async) if f is not None), key=lambda f: f.key
        )
    if hard is not None:
        return MessageView(
            status=FAILED,
            failure_type="hard",
            failure_reason=hard.reason,
            bounce_class=hard.bounce_class,
            rule=hard.rule,
            attempts=state.attempts,
            complained=complained,
            has_error=True,
        )
    err = state.last_error
    if first == _EXPIRED:
        return MessageView(
            status=FAILED,
            failure_type="soft",
            failure_reason=UNREACHABLE if err is None else err.reason,
            bounce_class=None if err is None else err.bounce_class,
            rule=None if err is None else err.rule,
            attempts=state.attempts,
            complained=complained,
            has_error=True,
        )
    return MessageView(
        status=TAKEN_INTO_ACCOUNT,
        failure_type=None if err is None else err.failure_type,
        failure_reason=None if err is None else err.reason,
        bounce_class=None if err is None else err.bounce_class,
        rule=None if err is None else err.rule,
        attempts=state.attempts,
        next_attempt_time=state.next_attempt_time,
        complained=complained,
        has_error=state.errored,
    )


def is_terminal(v: MessageView) -> bool:
    """Sent or failed: no longer pending (a sent message may still fail asynchronously)."""
    return v.status != TAKEN_INTO_ACCOUNT
