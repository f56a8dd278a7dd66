"""Reputation signals and rolling windows in event time.

``signal_from_event`` turns one decoded event plus its qualification into a
``Signal`` (or None when the event says nothing about reputation):

=====================================================  =============================
event                                                  outcome (attempt?)
=====================================================  =============================
send delivered                                         delivered (yes)
send relayed                                           None: not an attempt yet
bounce complaint                                       complaint (no)
bounce/retry with ``q.rate_limit``                     rate_limit
bounce class 50-54 (mail/spam block, relaying denied)  block
bounce class 10, reason "User unknown", or hard        hard
other soft / transient failures                        soft
qualification "undefined"                              attempt (counted, unclassified)
qualification "ignored", retry expired, no q           None
=====================================================  =============================

Synchronous bounces and retry deferrals are SMTP attempts; asynchronous bounces
(DSN after acceptance) and complaints are not.

``ReputationBook`` keeps, per key, a 1 h window of twelve 5-minute buckets of counts
(attempts, delivered, hard, soft, blocks, rate-limit deferrals, complaints). Keys:
``domain:<domain>``, ``group:<provider group>`` and ``ip_group:<ip>|<group>``.
Buckets older than the window (relative to the key's newest event) are dropped and a
signal older than the window is not counted; keys idle for ``evict_after_ms``
(default 24 h) behind the newest event seen are evicted, so state stays bounded.

Rates (1 h window; 0 with no denominator; capped at 1)::

    invalid    = hard / attempts          block      = blocks / attempts
    rate_limit = rate_limited / attempts  soft       = soft / attempts
    delivery   = delivered / attempts     complaint  = complaints / delivered

Score 0-100 (100 = clean), each weight chosen so that the suspension threshold of
the default MX rules costs 50 points (invalid 10 %, complaint 0.5 %, block 20 %)::

    score = max(0, 100 - (500 invalid + 10000 complaint + 250 block
                          + 100 rate_limit + 50 soft))

``add(signal)`` returns a record for each of the signal's keys whose window moved
into a new bucket (or that is new), or whose rates moved materially since the last
record of that key: score by >= 5 points, a rate by >= 1 point of percentage, or the
complaint rate by >= 0.1 point.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from streams.domain.control.mx_rules import MxRules
from streams.domain.events import Family, InputEvent, is_remote_verdict
from streams.domain.types import Qualification

Outcome = Literal["attempt", "delivered", "hard", "soft", "block", "rate_limit", "complaint"]
RepScope = Literal["domain", "group", "ip_group"]

BUCKET_MS = 5 * 60 * 1000
WINDOW_BUCKETS = 12  # 1 h
EVICT_AFTER_MS = 24 * 3600 * 1000
SCORE_DELTA = 5.0
RATE_DELTA = 0.01
COMPLAINT_DELTA = 0.001

# Index of each counter in a bucket.
COUNTERS = ("attempts", "delivered", "hard", "soft", "blocks", "rate_limited", "complaints")
_INDEX = {
    "delivered": 1,
    "hard": 2,
    "soft": 3,
    "block": 4,
    "rate_limit": 5,
    "complaint": 6,
}
_BLOCK_CLASSES = range(50, 55)
_INVALID_CLASS = 10


@dataclass(frozen=True, slots=True)
class Signal:
    time_ms: int
    event_id: str
    domain: str
    group: str
    sending_ip: str | None
    outcome: Outcome
    attempt: bool  # the event was an SMTP attempt (counts in the attempts denominator)
    reply: str | None = None
    qualification: Qualification | None = None


def _reply_text(event: Mapping[str, Any]) -> str | None:
    """ "421 4.7.28 diagnostic", without repeating what the diagnostic already says."""
    diag = (event.get("diagnostic") or "").strip()
    parts = []
    code, status = event.get("smtp_code"), event.get("enhanced_status")
    if code and not diag.startswith(str(code)):
        parts.append(str(code))
    if status and status not in diag:
        parts.append(status)
    if diag:
        parts.append(diag)
    return " ".join(parts) or None


def signal_from_event(
    family: Family, event: InputEvent, q: Qualification | None, rules: MxRules
) -> Signal | None:
    """The reputation signal of one event (table in the module docstring)."""
    kind = event["kind"]
    if not is_remote_verdict(event):
        return None
    if family == "send" and kind != "delivered":
        return None
    if family == "retry" and kind != "deferred":
        return None
    outcome: Outcome
    attempt = family != "bounce" or kind == "sync"
    if family == "send":
        outcome = "delivered"
    elif kind == "complaint":
        outcome, attempt = "complaint", False
    elif q is None or q.failure_type == "ignored":
        return None
    elif q.rate_limit:
        outcome = "rate_limit"
    elif q.bounce_class in _BLOCK_CLASSES:
        outcome = "block"
    elif (
        q.bounce_class == _INVALID_CLASS
        or q.failure_reason == "User unknown"
        or q.failure_type == "hard"
    ):
        outcome = "hard"
    elif q.failure_type == "undefined":
        if not attempt:
            return None
        outcome = "attempt"
    else:
        outcome = "soft"
    domain = event["recipient"].rpartition("@")[2].lower().rstrip(".")
    data: Mapping[str, Any] = event
    return Signal(
        time_ms=event["event_time"],
        event_id=event["event_id"],
        domain=domain,
        group=rules.group_for(domain, data.get("mx_host")),
        sending_ip=data.get("sending_ip") or None,
        outcome=outcome,
        attempt=attempt,
        reply=None if family == "send" else _reply_text(data),
        qualification=q,
    )


def signal_keys(signal: Signal) -> list[tuple[RepScope, str]]:
    """(scope, key) of every window a signal counts in."""
    keys: list[tuple[RepScope, str]] = [
        ("domain", f"domain:{signal.domain}"),
        ("group", f"group:{signal.group}"),
    ]
    if signal.sending_ip:
        keys.append(("ip_group", f"ip_group:{signal.sending_ip}|{signal.group}"))
    return keys


@dataclass(frozen=True, slots=True)
class Rates:
    invalid: float
    block: float
    rate_limit: float
    soft: float
    delivery: float
    complaint: float

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> Rates:
        def ratio(num: str, den: str) -> float:
            d = counts[den]
            return min(1.0, counts[num] / d) if d else 0.0

        return cls(
            invalid=ratio("hard", "attempts"),
            block=ratio("blocks", "attempts"),
            rate_limit=ratio("rate_limited", "attempts"),
            soft=ratio("soft", "attempts"),
            delivery=ratio("delivered", "attempts"),
            complaint=ratio("complaints", "delivered"),
        )

    def score(self) -> float:
        penalty = (
            500 * self.invalid
            + 10000 * self.complaint
            + 250 * self.block
            + 100 * self.rate_limit
            + 50 * self.soft
        )
        return round(max(0.0, 100.0 - penalty), 2)


@dataclass(frozen=True, slots=True)
class ReputationRecord:
    key: str
    scope: RepScope
    time_ms: int  # event time of the signal that produced the record
    window_start_ms: int
    window_ms: int
    attempts: int
    delivered: int
    hard: int
    soft: int
    blocks: int
    rate_limited: int
    complaints: int
    rates: Rates
    score: float

    @property
    def window_end_ms(self) -> int:
        return self.window_start_ms + self.window_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KeyWindow:
    """Rolling buckets of one key."""

    __slots__ = ("buckets", "key", "last_emitted", "last_seen_ms", "newest_bucket", "scope")

    def __init__(self, key: str, scope: RepScope) -> None:
        self.key = key
        self.scope: RepScope = scope
        self.buckets: dict[int, list[int]] = {}
        self.newest_bucket = -1
        self.last_seen_ms = 0
        self.last_emitted: Rates | None = None

    def add(self, signal: Signal) -> bool:
        """Count the signal; True when the window moved to a new bucket."""
        index = signal.time_ms // BUCKET_MS
        if index <= self.newest_bucket - WINDOW_BUCKETS:
            return False  # older than the window
        advanced = index > self.newest_bucket
        if advanced:
            self.newest_bucket = index
            horizon = index - WINDOW_BUCKETS
            for old in [b for b in self.buckets if b <= horizon]:
                del self.buckets[old]
        self.last_seen_ms = max(self.last_seen_ms, signal.time_ms)
        counts = self.buckets.setdefault(index, [0] * len(COUNTERS))
        if signal.attempt:
            counts[0] += 1
        if signal.outcome in _INDEX:
            counts[_INDEX[signal.outcome]] += 1
        return advanced

    def counts(self) -> dict[str, int]:
        totals = [0] * len(COUNTERS)
        for counts in self.buckets.values():
            for i, n in enumerate(counts):
                totals[i] += n
        return dict(zip(COUNTERS, totals, strict=True))

    def record(self, time_ms: int) -> ReputationRecord:
        counts = self.counts()
        rates = Rates.of(counts)
        return ReputationRecord(
            key=self.key,
            scope=self.scope,
            time_ms=time_ms,
            window_start_ms=(self.newest_bucket - WINDOW_BUCKETS + 1) * BUCKET_MS,
            window_ms=WINDOW_BUCKETS * BUCKET_MS,
            rates=rates,
            score=rates.score(),
            **counts,
        )

    def moved(self, rates: Rates) -> bool:
        last = self.last_emitted
        if last is None:
            return True
        return (
            abs(rates.score() - last.score()) >= SCORE_DELTA
            or abs(rates.complaint - last.complaint) >= COMPLAINT_DELTA
            or any(
                abs(getattr(rates, f) - getattr(last, f)) >= RATE_DELTA
                for f in ("invalid", "block", "rate_limit", "soft", "delivery")
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "scope": self.scope,
            "buckets": {str(b): list(c) for b, c in self.buckets.items()},
            "newest_bucket": self.newest_bucket,
            "last_seen_ms": self.last_seen_ms,
            "last_emitted": None if self.last_emitted is None else asdict(self.last_emitted),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyWindow:
        window = cls(data["key"], data["scope"])
        window.buckets = {int(b): list(c) for b, c in data["buckets"].items()}
        window.newest_bucket = int(data["newest_bucket"])
        window.last_seen_ms = int(data["last_seen_ms"])
        last = data.get("last_emitted")
        window.last_emitted = None if last is None else Rates(**last)
        return window


class ReputationBook:
    """Windows of every key, with idle eviction driven by event time."""

    def __init__(self, evict_after_ms: int = EVICT_AFTER_MS) -> None:
        self.evict_after_ms = evict_after_ms
        self._windows: dict[str, KeyWindow] = {}
        self._high_water_ms = 0
        self._last_sweep_bucket = -1

    def add(self, signal: Signal, skip: frozenset[str] = frozenset()) -> list[ReputationRecord]:
        """Count the signal in each of its windows but those in ``skip`` (the caller's way
        to not count a redelivered signal twice)."""
        records = []
        for scope, key in signal_keys(signal):
            if key in skip:
                continue
            window = self._windows.get(key)
            new = window is None
            if window is None:
                window = self._windows[key] = KeyWindow(key, scope)
            advanced = window.add(signal)
            rates = Rates.of(window.counts())
            if new or advanced or window.moved(rates):
                window.last_emitted = rates
                records.append(window.record(signal.time_ms))
        self._high_water_ms = max(self._high_water_ms, signal.time_ms)
        self._sweep()
        return records

    def _sweep(self) -> None:
        # Once per bucket of event time: cheap enough for every signal.
        bucket = self._high_water_ms // BUCKET_MS
        if bucket == self._last_sweep_bucket:
            return
        self._last_sweep_bucket = bucket
        horizon = self._high_water_ms - self.evict_after_ms
        for key in [k for k, w in self._windows.items() if w.last_seen_ms < horizon]:
            del self._windows[key]

    def snapshot(self, key: str) -> ReputationRecord | None:
        window = self._windows.get(key)
        return None if window is None else window.record(window.last_seen_ms)

    def window(self, key: str) -> KeyWindow | None:
        return self._windows.get(key)

    def restore(self, window: KeyWindow) -> None:
        self._windows[window.key] = window
        self._high_water_ms = max(self._high_water_ms, window.last_seen_ms)

    def keys(self) -> Iterator[str]:
        return iter(self._windows)

    def size(self) -> int:
        return len(self._windows)
