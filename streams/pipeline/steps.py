"""The processing steps of the pipeline over key-value state, with no Kafka or Faust import.

The Faust agents (streams/runtime/app.py) call these with Faust tables as state; ``replay`` calls
them with dicts. Both therefore compute the same results from the same events.

Data flows one way:

    input event ─► FeedbackProcessor ─► status, address (outputs)
                          │          └─► kpi-part (per tick) ─► KpiAggregator ─► kpi (output)
                          └─► signal ─► ControlProcessor ─► reputation, throttle (outputs)
                                        (event-time sequencer,
                                         reputation windows, controller)

Delivery is at least once. Each step stores, per key, the source offset of the input that
last changed it; when an input at or below that offset comes again (a redelivery after a
crash, whose state change had reached the changelog while its output may not have reached
its topic), the step publishes the current record again with the same version. Consumers
keep the highest version, so a repeat is harmless and nothing is lost.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from streams.domain.bounce.qualifier import Qualifier
from streams.domain.control.mx_rules import MxRules
from streams.domain.control.reputation import (
    KeyWindow,
    ReputationBook,
    ReputationRecord,
    Signal,
    signal_from_event,
    signal_keys,
)
from streams.domain.control.sequencer import Due, Sequencer
from streams.domain.control.throttle_controller import (
    KeyState,
    ThrottleController,
    ThrottleSetting,
    main_key,
)
from streams.domain.recipient import address_health, message_status
from streams.domain.recipient.address_health import AddressState, QuarantinePolicy
from streams.domain.recipient.delivery_kpi import KpiCounts, KpiDelta, kpi_delta
from streams.domain.recipient.message_status import MessageState, MessageView, ValidityPolicy
from streams.domain.types import Qualification

Store = MutableMapping[str, Any]

_DAY_MS = 86_400_000
_ZERO = KpiCounts()


class Output(NamedTuple):
    topic: str  # logical topic name (streams.pipeline.topics)
    key: str
    value: dict[str, Any]


@dataclass(frozen=True)
class PipelineConfig:
    validity: ValidityPolicy = field(default_factory=ValidityPolicy)
    quarantine: QuarantinePolicy = field(default_factory=QuarantinePolicy)
    # How long a message stays in the table after it became final (a late async bounce
    # within this time still turns "sent" into "failed").
    message_retention_ms: int = 7 * _DAY_MS
    # How long a valid address with no activity is kept.
    address_retention_ms: int = 30 * _DAY_MS


def qualify_event(qualifier: Qualifier, family: str, event: dict[str, Any]) -> Qualification | None:
    """Qualify a bounce or retry once; the result travels with everything derived from it."""
    if family == "send" or event["kind"] == "complaint":
        return None
    if (
        family == "retry"
        and event["kind"] == "expired"
        and not (event.get("smtp_code") or event.get("enhanced_status") or event.get("diagnostic"))
    ):
        return None
    domain = event["recipient"].rpartition("@")[2].lower()
    return qualifier.qualify(
        event.get("smtp_code"),
        event.get("enhanced_status"),
        event.get("diagnostic"),
        provider=event.get("mx_host") or domain,
    )


class _DueIndex:
    """Per-partition min-heaps of (due time, key) with lazy deletion: the record itself
    holds the authoritative ``due``; stale heap entries are skipped when popped."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._heaps: dict[int, list[tuple[int, str]]] | None = None

    def push(self, partition: int, due: int | None, key: str) -> None:
        if self._heaps is not None and due is not None:
            heapq.heappush(self._heaps.setdefault(partition, []), (due, key))

    def pop_due(self, partition: int, now: int) -> list[str]:
        if self._heaps is None:
            # First sweep since start or rebalance: one pass over the table for every partition.
            self._heaps = {}
            for key, rec in self._store.items():
                if rec.get("due") is not None:
                    self._heaps.setdefault(rec["p"], []).append((rec["due"], key))
            for heap in self._heaps.values():
                heapq.heapify(heap)
        heap = self._heaps.setdefault(partition, [])
        keys: dict[str, None] = {}
        # Strictly before: at exactly the due time nothing has changed yet.
        while heap and heap[0][0] < now:
            due, key = heapq.heappop(heap)
            rec = self._store.get(key)
            # A record rewritten with the same due time has two equal entries: one key once.
            if rec is not None and rec.get("due") == due:
                keys[key] = None
        return list(keys)

    def reset(self) -> None:
        self._heaps = None


def _src_with(rec: dict[str, Any] | None, family: str, offset: int) -> dict[str, int]:
    src = dict(rec["src"]) if rec else {}
    src[family] = offset
    return src


def _write(
    store: Store,
    index: _DueIndex,
    key: str,
    rec: dict[str, Any] | None,
    state: dict[str, Any],
    shown: dict[str, Any],
    changed: bool,
    due: int | None,
    partition: int,
    offset: int,
    family: str,
) -> int:
    """Store a keyed record (state, what was last published, version, source offsets,
    partition, due time) and index its due time; returns the version."""
    version = rec["v"] + (1 if changed else 0) if rec else 1
    store[key] = {
        "s": state,
        "view": shown,
        "v": version,
        "src": _src_with(rec, family, offset) if changed else rec["src"] if rec else {},
        "p": partition,
        "due": due,
    }
    index.push(partition, due, key)
    return version


def _is_redelivery(rec: dict[str, Any] | None, family: str, offset: int) -> bool:
    return rec is not None and offset <= rec["src"].get(family, -1)


class FeedbackProcessor:
    """Per input partition: message status, address health and KPI partials.

    ``messages`` is keyed by message id, ``addresses`` by lower-cased address,
    ``kpi_parts`` by ``<delivery id>|<partition>``; all three live in the partition of the
    recipient's events (inputs are keyed by recipient), so no repartition is needed.
    """

    def __init__(
        self,
        messages: Store,
        addresses: Store,
        kpi_parts: Store,
        qualifier: Qualifier,
        config: PipelineConfig | None = None,
        signal_fn: Callable[[str, dict[str, Any], Qualification | None], Output | None]
        | None = None,
        clocks: Store | None = None,
    ) -> None:
        self.messages = messages
        self.addresses = addresses
        self.kpi_parts = kpi_parts
        self.qualifier = qualifier
        self.config = config or PipelineConfig()
        self.signal_fn = signal_fn
        # Partition (str) → the clock when its last tick was applied. A restarted worker
        # starts from the largest: the ticks and events that carried it are committed and
        # not read again, and with no new input its own clock would stay behind for good.
        self.clocks: Store = {} if clocks is None else clocks
        self.clock = 0
        self._message_due = _DueIndex(messages)
        self._address_due = _DueIndex(addresses)
        # Partition → KPI sums recomputed from the messages table, not yet reconciled.
        self._kpi_truth: dict[int, dict[str, KpiCounts]] | None = None
        self._kpi_checked: set[int] = set()
        # Partition → delivery id → (counts change, retired change) not yet in kpi_parts.
        # Partials are written and published once per tick, not once per event: a crash
        # loses only these, and the reconciliation after the restart redoes them.
        self._kpi_pending: dict[int, dict[str, tuple[KpiCounts, KpiCounts]]] = {}

    def reset_indexes(self) -> None:
        """Call after a rebalance: due indexes and KPI checks are redone lazily."""
        self._message_due.reset()
        self._address_due.reset()
        self._kpi_truth = None
        self._kpi_checked.clear()
        self._kpi_pending.clear()

    def restore_clock(self) -> None:
        """Catch the clock up with the one stored by the ticks of this or earlier workers."""
        self.clock = max(self.clock, max(self.clocks.values(), default=0))

    def _reconcile_kpis(self, partition: int, out: list[Output]) -> None:
        """Make the partition's KPI partials agree with its messages table.

        A message write and its partial's write go to two changelogs; a crash between them
        would leave the partial off for good, since the redelivered event then changes no
        message. So the first time a partition is seen after a start or a rebalance, its
        partials are recomputed from the messages (the authority) plus the retired counts of
        messages that left the table, and corrected where they differ.
        """
        if self._kpi_truth is None:
            self._kpi_truth = {}
            for rec in self.messages.values():
                sums = self._kpi_truth.setdefault(rec["p"], {})
                delivery_id = rec["s"]["delivery_id"]
                view = MessageView.from_dict(rec["view"])
                sums[delivery_id] = sums.get(delivery_id, KpiCounts()).add(kpi_delta(None, view))
        truth = self._kpi_truth.pop(partition, {})
        self._kpi_checked.add(partition)
        suffix = f"|{partition}"
        keys = {k for k in self.kpi_parts if k.endswith(suffix)}
        keys |= {f"{d}{suffix}" for d in truth}
        for key in keys:
            delivery_id = key[: -len(suffix)]
            rec = self.kpi_parts.get(key)
            retired = KpiCounts.from_dict(rec["r"]) if rec else KpiCounts()
            want = (truth.get(delivery_id, KpiCounts()) + retired).to_dict()
            if rec is None or rec["c"] != want:
                new_rec = {"c": want, "r": retired.to_dict(), "v": rec["v"] + 1 if rec else 1}
                self.kpi_parts[key] = new_rec
                out.append(self._part_record(delivery_id, partition, new_rec))

    def process(
        self, family: str, event: dict[str, Any], partition: int, offset: int
    ) -> list[Output]:
        self.clock = max(self.clock, event["event_time"])
        q = qualify_event(self.qualifier, family, event)
        out: list[Output] = []
        if partition not in self._kpi_checked:
            self._reconcile_kpis(partition, out)
        self._message(family, event, q, partition, offset, out)
        self._address(family, event, q, partition, offset, out)
        if self.signal_fn is not None:
            signal = self.signal_fn(family, event, q)
            if signal is not None:
                signal.value["src"] = [f"{family}:{partition}", offset]
                out.append(signal)
        return out

    def tick(self, now_ms: int, partition: int, offset: int, family: str = "clock") -> list[Output]:
        """Advance the clock and apply what time alone changes in ``partition``: validity
        expiry, quarantine resets and lifts, retention."""
        self.clock = max(self.clock, now_ms)
        out: list[Output] = []
        if partition not in self._kpi_checked:
            self._reconcile_kpis(partition, out)
        for key in self._message_due.pop_due(partition, self.clock):
            self._message_time(key, partition, offset, family, out)
        for key in self._address_due.pop_due(partition, self.clock):
            self._address_time(key, partition, offset, family, out)
        out += self.flush_kpis(partition)
        if self.clocks.get(str(partition)) != self.clock:
            self.clocks[str(partition)] = self.clock
        return out

    # -- message status -------------------------------------------------------------

    def _message(
        self,
        family: str,
        event: dict[str, Any],
        q: Qualification | None,
        partition: int,
        offset: int,
        out: list[Output],
    ) -> None:
        mid = event["message_id"]
        rec = self.messages.get(mid)
        old_state = MessageState.from_dict(rec["s"]) if rec else None
        state = message_status.apply(old_state, family, event, q, self.config.validity)
        self._publish_message(mid, rec, state, state != old_state, partition, offset, family, out)

    def _message_time(
        self, mid: str, partition: int, offset: int, family: str, out: list[Output]
    ) -> None:
        rec = self.messages[mid]
        state = MessageState.from_dict(rec["s"])
        view = message_status.view(state, self.clock)
        if (
            message_status.is_terminal(view)
            and rec["view"] == view.to_dict()
            and self.clock >= state.last_seen + self.config.message_retention_ms
        ):
            # The message's contribution moves from live to retired: the counts stay.
            self._kpi_add(partition, state.delivery_id, retired=kpi_delta(None, view))
            del self.messages[mid]
            return
        self._publish_message(mid, rec, state, False, partition, offset, family, out)

    def _publish_message(
        self,
        mid: str,
        rec: dict[str, Any] | None,
        state: MessageState,
        state_changed: bool,
        partition: int,
        offset: int,
        family: str,
        out: list[Output],
    ) -> None:
        view = message_status.view(state, self.clock)
        old_view = MessageView.from_dict(rec["view"]) if rec else None
        changed = view != old_view
        if changed or state_changed:
            due = message_status.deadline(state)
            if due is None or message_status.is_terminal(view):
                due = max(state.last_seen, self.clock) + self.config.message_retention_ms
            version = _write(
                self.messages,
                self._message_due,
                mid,
                rec,
                state.to_dict(),
                view.to_dict(),
                changed,
                due,
                partition,
                offset,
                family,
            )
            if changed:
                out.append(self._status_record(mid, state.delivery_id, view, version))
                self._kpi(state.delivery_id, old_view, view, partition)
                return
        if _is_redelivery(rec, family, offset):
            assert rec is not None
            out.append(self._status_record(mid, state.delivery_id, view, rec["v"]))
            self._kpi_add(partition, state.delivery_id)

    def _status_record(self, mid: str, delivery_id: str, view: MessageView, version: int) -> Output:
        return Output(
            "status",
            mid,
            {
                "event_id": f"{mid}:{version}",
                "event_time": self.clock,
                "message_id": mid,
                "delivery_id": delivery_id,
                "status": view.status,
                "failure_type": view.failure_type,
                "failure_reason": view.failure_reason,
                "bounce_class": view.bounce_class,
                "rule": view.rule,
                "attempts": view.attempts,
                "next_attempt_time": view.next_attempt_time,
                "version": version,
            },
        )

    # -- delivery KPI partials ----------------------------------------------------------

    def _kpi(
        self, delivery_id: str, old: MessageView | None, new: MessageView, partition: int
    ) -> None:
        delta = kpi_delta(old, new)
        if not delta.is_zero:
            self._kpi_add(partition, delivery_id, counts=delta)

    def _kpi_add(
        self,
        partition: int,
        delivery_id: str,
        counts: KpiDelta | None = None,
        retired: KpiDelta | None = None,
    ) -> None:
        """Note a change of the partial; with no change, the partial is published again."""
        pending = self._kpi_pending.setdefault(partition, {})
        c, r = pending.get(delivery_id, (_ZERO, _ZERO))
        pending[delivery_id] = (
            c if counts is None else c.add(counts),
            r if retired is None else r.add(retired),
        )

    def flush_kpis(self, partition: int) -> list[Output]:
        """Write the partition's pending KPI partial changes and publish each changed
        partial once (called on every tick of the partition)."""
        out: list[Output] = []
        for delivery_id, (c, r) in self._kpi_pending.pop(partition, {}).items():
            key = f"{delivery_id}|{partition}"
            rec = self.kpi_parts.get(key)
            if c == _ZERO and r == _ZERO:
                if rec is not None:
                    out.append(self._part_record(delivery_id, partition, rec))
                continue
            counts = KpiCounts.from_dict(rec["c"]) + c if rec else c
            retired = KpiCounts.from_dict(rec["r"]) + r if rec else r
            # Retiring messages moves counts, it does not change them: same version, unsent.
            publish = c != _ZERO or rec is None
            version = 1 if rec is None else rec["v"] + 1 if publish else rec["v"]
            new_rec = {"c": counts.to_dict(), "r": retired.to_dict(), "v": version}
            self.kpi_parts[key] = new_rec
            if publish:
                out.append(self._part_record(delivery_id, partition, new_rec))
        return out

    @staticmethod
    def _part_record(delivery_id: str, partition: int, rec: dict[str, Any]) -> Output:
        return Output(
            "kpi-part",
            delivery_id,
            {"delivery_id": delivery_id, "partition": partition, "v": rec["v"], "c": rec["c"]},
        )

    # -- address health -------------------------------------------------------------------

    def _address(
        self,
        family: str,
        event: dict[str, Any],
        q: Qualification | None,
        partition: int,
        offset: int,
        out: list[Output],
    ) -> None:
        address = event["recipient"].lower()
        rec = self.addresses.get(address)
        old_state = AddressState.from_dict(rec["s"]) if rec else None
        state = address_health.apply(old_state, family, event, q, self.config.quarantine)
        self._publish_address(
            address, rec, state, state != old_state, partition, offset, family, out
        )

    def _address_time(
        self, address: str, partition: int, offset: int, family: str, out: list[Output]
    ) -> None:
        rec = self.addresses[address]
        state = AddressState.from_dict(rec["s"])
        view = address_health.view(state, self.clock)
        if (
            view.state == address_health.VALID
            and state.max_seen is not None
            and self.clock >= state.max_seen + self.config.address_retention_ms
        ):
            del self.addresses[address]
            return
        self._publish_address(address, rec, state, False, partition, offset, family, out)

    def _publish_address(
        self,
        address: str,
        rec: dict[str, Any] | None,
        state: AddressState,
        state_changed: bool,
        partition: int,
        offset: int,
        family: str,
        out: list[Output],
    ) -> None:
        view = address_health.view(state, self.clock)
        shown = {
            "state": view.state,
            "error_count": view.error_count,
            "reason": view.reason,
            "last_error_time": view.last_error_at,
        }
        changed = rec is None or shown != rec["view"]
        if changed or state_changed:
            due = state.resets_at if (state.resets_at or -1) >= self.clock else None
            if due is None and view.state == address_health.VALID and state.max_seen is not None:
                due = state.max_seen + self.config.address_retention_ms
            version = _write(
                self.addresses,
                self._address_due,
                address,
                rec,
                state.to_dict(),
                shown,
                changed,
                due,
                partition,
                offset,
                family,
            )
            if changed:
                out.append(self._address_record(address, shown, version))
                return
        if _is_redelivery(rec, family, offset):
            assert rec is not None
            out.append(self._address_record(address, shown, rec["v"]))

    def _address_record(self, address: str, shown: dict[str, Any], version: int) -> Output:
        return Output(
            "address",
            address,
            {
                "event_id": f"{address}:{version}",
                "event_time": self.clock,
                "address": address,
                **shown,
                "version": version,
            },
        )


class KpiAggregator:
    """Sums the per-partition KPI partials of each delivery (keyed by delivery id).

    Each partial carries its partition's full counts and a version, so applying one is
    idempotent and order-tolerant: the newest version per partition wins.
    """

    def __init__(self, sums: Store) -> None:
        self.sums = sums

    def process(self, part: dict[str, Any], now_ms: int, offset: int) -> list[Output]:
        delivery_id = part["delivery_id"]
        rec = self.sums.get(delivery_id)
        parts = dict(rec["parts"]) if rec else {}
        pkey = str(part["partition"])
        if pkey in parts and parts[pkey][0] >= part["v"]:
            if rec is not None and offset <= rec["src"]:
                return [self._record(delivery_id, rec, now_ms)]
            return []
        parts[pkey] = [part["v"], part["c"]]
        new_rec = {"parts": parts, "v": rec["v"] + 1 if rec else 1, "src": offset}
        self.sums[delivery_id] = new_rec
        return [self._record(delivery_id, new_rec, now_ms)]

    @staticmethod
    def total(rec: dict[str, Any]) -> KpiCounts:
        total = KpiCounts()
        for _, counts in rec["parts"].values():
            total = total + KpiCounts.from_dict(counts)
        return total

    def _record(self, delivery_id: str, rec: dict[str, Any], now_ms: int) -> Output:
        return Output(
            "kpi", delivery_id, kpi_record(delivery_id, self.total(rec), rec["v"], now_ms)
        )


def kpi_record(delivery_id: str, c: KpiCounts, version: int, now_ms: int) -> dict[str, Any]:
    return {
        "event_id": f"{delivery_id}:{version}",
        "event_time": now_ms,
        "delivery_id": delivery_id,
        "to_deliver": c.to_deliver,
        "taken_into_account": c.taken_into_account,
        "sent": c.sent,
        "failed": c.failed,
        "failed_hard": c.failed_hard,
        "failed_soft": c.failed_soft,
        "pending": c.pending,
        "bounces_errors": c.bounces_errors,
        "success_pct": round(c.success_pct, 4),
        "version": version,
    }


# -- reputation and throttle control -------------------------------------------------------


def signal_output(
    rules: MxRules,
) -> Callable[[str, dict[str, Any], Qualification | None], Output | None]:
    """The FeedbackProcessor hook that turns events into signals keyed by provider group."""

    def make(family: str, event: dict[str, Any], q: Qualification | None) -> Output | None:
        signal = signal_from_event(family, event, q, rules)  # type: ignore[arg-type]
        if signal is None:
            return None
        return Output("signal", signal.group, signal_to_dict(signal))

    return make


def signal_to_dict(s: Signal) -> dict[str, Any]:
    q = s.qualification
    return {
        "t": s.time_ms,
        "id": s.event_id,
        "domain": s.domain,
        "group": s.group,
        "ip": s.sending_ip,
        "outcome": s.outcome,
        "attempt": s.attempt,
        "reply": s.reply,
        "q": None
        if q is None
        else [q.failure_type, q.failure_reason, q.bounce_class, q.rule, q.rate_limit],
    }


def signal_from_dict(d: dict[str, Any]) -> Signal:
    q = d["q"]
    return Signal(
        time_ms=d["t"],
        event_id=d["id"],
        domain=d["domain"],
        group=d["group"],
        sending_ip=d["ip"],
        outcome=d["outcome"],
        attempt=d["attempt"],
        reply=d["reply"],
        qualification=None if q is None else Qualification(q[0], q[1], q[2], q[3], q[4]),
    )


class Source(NamedTuple):
    """The input a signal comes from: its stream (``family:partition``) and offset.

    A re-processed input (at-least-once, after a crash) emits its signal again, at a new
    offset of the signal topic; its source is the same, so it is not counted twice. The
    sequencer releases each stream's signals in offset order, so the highest source offset
    taken in per stream is enough to know what a key has seen."""

    stream: str
    offset: int

    @classmethod
    def of(cls, signal_record: dict[str, Any]) -> Source:
        stream, offset = signal_record["src"]
        return cls(str(stream), int(offset))


# Event-time spacing of the controller's ticks (suspension ends, step-ups): fixed instants,
# so that a replay ticks exactly where a live run did.
CONTROL_TICK_MS = 10_000

# key → (signal partition, source stream → offset of the last signal taken in), for
# changes not yet stored
_Dirty = dict[str, tuple[int, dict[str, int]]]


class Released(NamedTuple):
    """What ``ControlProcessor.release`` took in: outputs, the tokens of the signals taken
    in, and the tokens of signals whose step raised, with the error."""

    outputs: list[Output]
    tokens: list[Any]
    failed: list[tuple[Any, Exception]]


_Held = tuple[Signal, Source, Any]


class _PartitionControl:
    def __init__(self, rules: MxRules, sequencer: Sequencer[_Held]) -> None:
        self.book = ReputationBook()
        self.controller = ThrottleController(rules)
        self.sequencer = sequencer


class ControlProcessor:
    """Rolling reputation and the throttle controller, per signal-topic partition.

    Signals are keyed by provider group, so each group's windows and settings have one
    owner. Signals are not taken in as they arrive: an event-time sequencer
    (``streams.domain.control.sequencer``) holds them until every input stream has moved past
    them (``claim``) and releases them, with the controller's ticks, in one order that
    depends on the input alone; so a restarted or rebalanced worker, and ``replay``, take
    the same decisions. ``add`` holds a signal with a token (the worker's input record,
    left unacknowledged while held); ``release`` returns the outputs and the tokens of the
    signals taken in.

    The book, controller and sequencer of a partition are rebuilt from the ``windows``,
    ``settings`` and ``sequences`` tables the first time the partition is seen after a
    start or rebalance. The tables are written by ``persist`` (the worker calls it before
    each offset commit), not per signal: a key's window changes with every signal, and
    writing it each time was half of the worker's table writes. Each stored record holds,
    per source stream, the offset of the last signal it took in (see ``Source``), so state
    persisted with a commit is never behind that commit and a signal emitted twice counts
    once.
    """

    def __init__(
        self,
        windows: Store,
        settings: Store,
        rules: MxRules,
        streams: list[str],
        sequences: Store | None = None,
        tick_ms: int = CONTROL_TICK_MS,
    ) -> None:
        self.windows = windows
        self.settings = settings
        self.sequences: Store = {} if sequences is None else sequences
        self.rules = rules
        self.streams = list(streams)
        self._stream_set = frozenset(streams)
        self.tick_ms = tick_ms
        self._parts: dict[int, _PartitionControl] = {}
        self._dirty_windows: _Dirty = {}
        self._dirty_settings: _Dirty = {}
        self._dirty_sequences: set[int] = set()

    def reset(self) -> None:
        """After a rebalance: unstored changes are dropped with the books, held signals with
        the sequencers; neither was committed, so their signals come again."""
        self._parts.clear()
        self._dirty_windows.clear()
        self._dirty_settings.clear()
        self._dirty_sequences.clear()

    def _part(self, partition: int) -> _PartitionControl:
        part = self._parts.get(partition)
        if part is None:
            stored = self.sequences.get(str(partition))
            sequencer: Sequencer[_Held] = Sequencer.from_dict(stored, self.streams, self.tick_ms)
            part = self._parts[partition] = _PartitionControl(self.rules, sequencer)
            for rec in self.windows.values():
                if rec["p"] == partition:
                    part.book.restore(KeyWindow.from_dict(rec["w"]))
            for rec in self.settings.values():
                if rec["p"] == partition:
                    part.controller.restore(KeyState.from_dict(rec["s"]))
        return part

    def add(self, record: dict[str, Any], partition: int, token: Any = None) -> bool:
        """Hold a signal record; False when it was taken in or held already (acknowledge
        its token now). A malformed record raises here, before it is held."""
        signal, source = signal_from_dict(record), Source.of(record)
        # Holding changes nothing the sequencer stores (claims, last released, last tick).
        return self._part(partition).sequencer.add(
            source.stream, source.offset, signal.time_ms, (signal, source, token)
        )

    def claim(self, partition: int, claims: dict[str, int]) -> None:
        """Progress of input streams: nothing below each time will come from them."""
        times = {str(stream): int(time_ms) for stream, time_ms in claims.items()}
        sequencer = self._part(partition).sequencer
        for stream, time_ms in times.items():
            if stream in self._stream_set:
                sequencer.claim(stream, time_ms)
        self._dirty_sequences.add(partition)

    def release(self, partition: int, until: int | None = None) -> Released:
        """Take in the signals the watermark (or ``until``) has passed, and tick between
        them. A signal whose step fails is reported with its token, and the rest go on."""
        part = self._part(partition)
        done = Released([], [], [])
        for kind, time_ms, item in part.sequencer.steps(until, self._due(part)):
            if kind == "tick" or item is None:
                done.outputs.extend(self._tick(part, partition, time_ms))
                continue
            signal, source, token = item
            try:
                done.outputs.extend(self._take(part, signal, partition, source))
            except Exception as exc:  # a bug in one signal's step must not stop the others
                done.failed.append((token, exc))
            else:
                done.tokens.append(token)
        if done.outputs or done.tokens or done.failed:
            self._dirty_sequences.add(partition)
        return done

    @staticmethod
    def _due(part: _PartitionControl) -> Due | None:
        """When the partition's next tick could change anything: the ticks before it are
        left out (see ``ThrottleController.next_due``)."""
        return part.controller.next_due

    def waiting(self) -> dict[int, tuple[int, str, int]]:
        """Partition → (signals held, the input stream holding them back, its bound in
        event time, -1 if never heard of), for partitions that hold signals."""
        out = {}
        for partition, part in sorted(self._parts.items()):
            slowest = part.sequencer.slowest()
            if part.sequencer.held and slowest is not None:
                out[partition] = (part.sequencer.held, *slowest)
        return out

    @staticmethod
    def _taken(dirty: _Dirty, store: Store, key: str) -> dict[str, int]:
        """Source stream → offset of the last signal ``key`` took in."""
        if key in dirty:
            return dirty[key][1]
        rec = store.get(key)
        return {} if rec is None else rec["o"]

    @classmethod
    def _seen(cls, dirty: _Dirty, store: Store, key: str, source: Source) -> bool:
        return source.offset <= cls._taken(dirty, store, key).get(source.stream, -1)

    @classmethod
    def _note(cls, dirty: _Dirty, store: Store, key: str, partition: int, source: Source) -> None:
        taken = dirty[key][1] if key in dirty else dict(cls._taken(dirty, store, key))
        taken[source.stream] = max(source.offset, taken.get(source.stream, -1))
        dirty[key] = (partition, taken)

    def _take(
        self, part: _PartitionControl, signal: Signal, partition: int, source: Source
    ) -> list[Output]:
        """Count the signal and let the controller react.

        Windows and controller states are idempotent per signal: a signal a key took in
        already (its source at or below the last one) is not counted again; instead the
        settings it may have changed are published again, in case a crash lost them.
        """
        keys = [key for _scope, key in signal_keys(signal)]
        seen = frozenset(
            k for k in keys if self._seen(self._dirty_windows, self.windows, k, source)
        )
        out = [self._reputation_record(r) for r in part.book.add(signal, skip=seen)]
        for key in keys:
            if key not in seen and part.book.window(key) is not None:
                self._note(self._dirty_windows, self.windows, key, partition, source)
        _scope, main = main_key(signal)
        controlled = [main, f"ip_group:{signal.sending_ip}|{signal.group}"]
        if self._seen(self._dirty_settings, self.settings, main, source):
            for key in controlled:
                setting = part.controller.setting(key)
                if setting is not None:
                    out.append(throttle_output(setting))
            return out
        changed = part.controller.on_signal(signal, part.book)
        out += [throttle_output(setting) for setting in changed]
        for key in {*controlled, *(s.key for s in changed)}:
            if part.controller.state(key) is not None:
                self._note(self._dirty_settings, self.settings, key, partition, source)
        return out

    def _tick(self, part: _PartitionControl, partition: int, now_ms: int) -> list[Output]:
        changed = part.controller.tick(now_ms)
        for setting in changed:
            key = setting.key
            if part.controller.state(key) is not None and key not in self._dirty_settings:
                taken = dict(self._taken(self._dirty_settings, self.settings, key))
                self._dirty_settings[key] = (partition, taken)
        return [throttle_output(setting) for setting in changed]

    def persist(
        self, in_partition: Callable[[int], AbstractContextManager[object]] = nullcontext
    ) -> Callable[[], None]:
        """Store every window and controller state changed since the last call (each
        partition's writes inside ``in_partition(partition)``); returns the step that
        stores the changed sequencers as they are now.

        Call that step only once the first writes (and the outputs sent before them) are
        on the broker. A SIGKILL can land part of a flush, and a sequencer stored ahead of
        the states would, after the restart, skip re-read signals that were never counted;
        one stored behind only lets them through again, to be recognised per key."""
        by_partition: dict[int, list[tuple[Store, str, dict[str, Any]]]] = {}
        for key, (partition, taken) in self._dirty_windows.items():
            window = self._parts[partition].book.window(key)
            if window is not None:
                rec = {"w": window.to_dict(), "p": partition, "o": taken}
                by_partition.setdefault(partition, []).append((self.windows, key, rec))
        for key, (partition, taken) in self._dirty_settings.items():
            state = self._parts[partition].controller.state(key)
            if state is not None:
                rec = {"s": state.to_dict(), "p": partition, "o": taken}
                by_partition.setdefault(partition, []).append((self.settings, key, rec))
        sequences = {
            partition: self._parts[partition].sequencer.to_dict()
            for partition in self._dirty_sequences
            if partition in self._parts
        }
        self._dirty_windows.clear()
        self._dirty_settings.clear()
        self._dirty_sequences.clear()
        for partition, writes in by_partition.items():
            with in_partition(partition):
                for store, key, rec in writes:
                    store[key] = rec

        def store_sequences() -> None:
            for partition, rec in sequences.items():
                with in_partition(partition):
                    self.sequences[str(partition)] = rec

        return store_sequences

    def settings_off_baseline(self) -> list[ThrottleSetting]:
        """Settings that differ from their baseline, over the partitions held here."""
        return [s for part in self._parts.values() for s in part.controller.settings_off_baseline()]

    @staticmethod
    def _reputation_record(r: ReputationRecord) -> Output:
        return Output(
            "reputation",
            r.key,
            {
                "event_id": f"{r.key}:{r.time_ms}",
                "event_time": r.time_ms,
                "key": r.key,
                "scope": r.scope,
                "window_start": r.window_start_ms,
                "window_end": r.window_end_ms,
                "attempts": r.attempts,
                "delivered": r.delivered,
                "hard": r.hard,
                "soft": r.soft,
                "blocks": r.blocks,
                "rate_limited": r.rate_limited,
                "complaints": r.complaints,
                "score": float(r.score),
            },
        )


def throttle_output(s: ThrottleSetting) -> Output:
    return Output("throttle", s.key, throttle_record(s))


def throttle_record(s: ThrottleSetting) -> dict[str, Any]:
    return {
        "event_id": f"{s.key}:{s.version}",
        "event_time": s.changed_at,
        "key": s.key,
        "scope": s.scope,
        "mode": s.mode,
        "max_rate_per_hour": s.max_rate_per_hour,
        "max_connections": s.max_connections,
        "max_messages_per_connection": s.max_messages_per_connection,
        "retry_interval_s": s.retry_interval_s,
        "suspended_until": s.suspended_until,
        "reason": s.reason,
        "version": s.version,
    }
