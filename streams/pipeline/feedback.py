"""The feedback step: message status, address health and KPI partials per input partition.

The Faust agents (streams/runtime/app.py) call these with Faust tables as state; ``replay`` calls
them with dicts. Both therefore compute the same results from the same events.

Data flows one way:

    input event ─► FeedbackProcessor ─► status, address (outputs)
                          │          └─► kpi-part (per tick) ─► KpiAggregator ─► kpi (output)
                          └─► signal ─► ControlProcessor ─► reputation, throttle (outputs)
                                        (event-time sequencer,
                                         reputation windows, controller)

The ``messages`` and ``addresses`` tables hold compact encoded records
(``streams.pipeline.table_values``). A key that retires from them (a final message after
its retention, an idle valid address) gets a tombstone on its output topic, so that
compacted topics and the views forget it too, and leaves a small ``Retired`` marker in its
table for one more retention period. A late event must not bring a retired key back:

- every event of a retired message is refused as ``late`` while its marker stands (the
  worker dead-letters it): the message's history is gone and its counts are closed, so
  taking the event in would start it over and count it twice in the delivery indicators;
- once the marker is gone too, an event of an unknown message more than the retention
  behind the clock is refused the same way (it is older than any tombstone still unknown);
- an event older than its retired address's tombstone leaves the address alone (its
  message is handled as above); operator actions always apply.

Delivery is at least once. Each step stores, per key, the source offset of the input that
last changed it; when an input at or below that offset comes again (a redelivery after a
crash, whose state change had reached the changelog while its output may not have reached
its topic), the step publishes the current record again with the same version. Consumers
keep the highest version, so a repeat is harmless and nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.domain.bounce.qualifier import Qualifier
from streams.domain.recipient import address_health, message_status
from streams.domain.recipient.address_health import AddressState, QuarantinePolicy
from streams.domain.recipient.delivery_kpi import KpiCounts, KpiDelta, kpi_delta
from streams.domain.recipient.message_status import MessageState, MessageView, ValidityPolicy
from streams.domain.types import Qualification
from streams.pipeline.keyed_state import DueIndex, is_redelivery, write_tracked
from streams.pipeline.records import (
    Output,
    SignalHook,
    Source,
    Store,
    address_record,
    kpi_part_record,
    status_record,
    tombstone,
)
from streams.pipeline.table_values import ADDRESSES, MESSAGES, RecordStore, Retired, Tracked
from streams.pipeline.topics import Topic

_DAY_MS = 86_400_000
_ZERO = KpiCounts()
MessageRecord = Tracked[MessageState, MessageView]
AddressRecord = Tracked[AddressState, dict[str, Any]]


class LateEvent(ValueError):
    """An event older than the message retention, for a message no longer tracked."""

    kind = "late"


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
        signal_fn: SignalHook | None = None,
        clocks: Store | None = None,
        lazy_scan: bool = False,
    ) -> None:
        # ``lazy_scan``: the tables may be read by a scan while written (RocksDB).
        self.messages = RecordStore(messages, MESSAGES, lazy_scan)
        self.addresses = RecordStore(addresses, ADDRESSES, lazy_scan)
        self.kpi_parts = kpi_parts
        self.qualifier = qualifier
        self.config = config or PipelineConfig()
        self.signal_fn = signal_fn
        # Partition (str) → the clock when its last tick was applied. A restarted worker
        # starts from the largest: the ticks and events that carried it are committed and
        # not read again, and with no new input its own clock would stay behind for good.
        self.clocks: Store = {} if clocks is None else clocks
        self.clock = 0
        self._message_due = DueIndex(self.messages)
        self._address_due = DueIndex(self.addresses)
        # Partition → KPI sums recomputed from the messages table, not yet reconciled.
        self.epoch = 0  # see reset_indexes
        self._kpi_truth: dict[int, dict[str, KpiCounts]] | None = None
        self._kpi_checked: set[int] = set()
        # Partition → delivery id → (counts change, retired change) not yet in kpi_parts.
        # Partials are written and published once per tick, not once per event: a crash
        # loses only these, and the reconciliation after the restart redoes them.
        self._kpi_pending: dict[int, dict[str, tuple[KpiCounts, KpiCounts]]] = {}

    def reset_indexes(self, epoch: int = 0) -> None:
        """Call after a rebalance: due indexes and KPI checks are redone lazily. ``epoch``
        is a number larger than any version this partition's KPI partials could have had
        before (the worker gives the wall clock in microseconds): see ``_reconcile_kpis``."""
        self.epoch = epoch
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
        messages that left the table, and published again, each at a version of at least
        ``epoch``: a crash can also lose a partial's own changelog write after its record
        went out, and its next version would then be one the aggregator already has.
        """
        if self._kpi_truth is None:
            self._kpi_truth = {}
            for _mid, rec in self.messages.tracked():
                sums = self._kpi_truth.setdefault(rec.partition, {})
                delivery_id = rec.state.delivery_id
                sums[delivery_id] = sums.get(delivery_id, KpiCounts()).add(
                    kpi_delta(None, rec.view)
                )
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
            if rec is None or rec["c"] != want or rec["v"] < self.epoch:
                version = max(rec["v"] + 1 if rec else 1, self.epoch)
                new_rec = {"c": want, "r": retired.to_dict(), "v": version}
                self.kpi_parts[key] = new_rec
                out.append(kpi_part_record(delivery_id, partition, new_rec))

    def process(
        self,
        family: str,
        event: dict[str, Any],
        partition: int,
        offset: int,
        source: Source | None = None,
    ) -> list[Output]:
        """Apply one input event. Its signal names ``source`` as where it comes from, by
        default this input record (``family:partition`` at ``offset``).

        An operator's action concerns the address alone: no message, KPI or signal. Nor
        does it move the clock, which follows the MTAs' events: an action stamped by a
        wall clock ahead of a feed that runs behind would otherwise expire messages."""
        operator = family == Topic.OPERATOR
        found = None if operator else self._message_or_late(event)
        if not operator:
            self.clock = max(self.clock, event["event_time"])
        q = None if operator else qualify_event(self.qualifier, family, event)
        out: list[Output] = []
        if partition not in self._kpi_checked:
            self._reconcile_kpis(partition, out)
        if not operator:
            self._message(found, event, q, partition, offset, family, out)
        self._address(family, event, q, partition, offset, out)
        if self.signal_fn is not None and not operator:
            source = source or Source(f"{family}:{partition}", offset)
            signal = self.signal_fn(family, event, q, source)
            if signal is not None:
                out.append(signal)
        return out

    def _message_or_late(self, event: dict[str, Any]) -> MessageRecord | None:
        """The event's tracked message (None when new); LateEvent for one that would bring
        a retired message back. The one read of the message per event."""
        t, mid = event["event_time"], event["message_id"]
        found = self.messages.get(mid)
        if isinstance(found, Retired):
            ago = found.retired_at - t
            when = f"{ago} ms older than" if ago > 0 else f"{-ago} ms after"
            raise LateEvent(f"event {when} its message's tombstone (the message is retired)")
        if found is None and t <= self.clock - self.config.message_retention_ms:
            raise LateEvent(
                f"event {self.clock - t} ms behind the clock, for a message no longer "
                "tracked (more than the message retention)"
            )
        return found

    def _retire(
        self,
        store: RecordStore[Any, Any],
        index: DueIndex,
        key: str,
        rec: Tracked[Any, Any],
        keep_ms: int,
    ) -> None:
        """Replace a record by its marker, kept for ``keep_ms`` (one more retention)."""
        due = self.clock + keep_ms
        store[key] = Retired(rec.version, self.clock, rec.partition, due)
        index.push(rec.partition, due, key)

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
        rec: MessageRecord | None,
        event: dict[str, Any],
        q: Qualification | None,
        partition: int,
        offset: int,
        family: str,
        out: list[Output],
    ) -> None:
        old_state = rec.state if rec else None
        state = message_status.apply(old_state, family, event, q, self.config.validity)
        mid, recipient, state_changed = event["message_id"], event["recipient"], state != old_state
        self._publish_message(
            mid, rec, state, state_changed, partition, offset, family, out, recipient
        )

    def _message_time(
        self, mid: str, partition: int, offset: int, family: str, out: list[Output]
    ) -> None:
        rec = self.messages[mid]
        if isinstance(rec, Retired):
            del self.messages[mid]  # its marker's time is over
            return
        state = rec.state
        view = message_status.view(state, self.clock)
        if (
            message_status.is_terminal(view)
            and rec.view == view
            and self.clock >= state.last_seen + self.config.message_retention_ms
        ):
            # The message's contribution moves from live to retired: the counts stay.
            self._kpi_add(partition, state.delivery_id, retired=kpi_delta(None, view))
            self._retire(
                self.messages, self._message_due, mid, rec, self.config.message_retention_ms
            )
            out.append(tombstone(Topic.STATUS, mid, rec.version, self.clock))
            return
        self._publish_message(mid, rec, state, False, partition, offset, family, out)

    def _publish_message(
        self,
        mid: str,
        rec: MessageRecord | None,
        state: MessageState,
        state_changed: bool,
        partition: int,
        offset: int,
        family: str,
        out: list[Output],
        recipient: str | None = None,
    ) -> None:
        view = message_status.view(state, self.clock)
        old_view = rec.view if rec else None
        changed = view != old_view
        if changed or state_changed:
            due = message_status.deadline(state)
            if due is None or message_status.is_terminal(view):
                due = max(state.last_seen, self.clock) + self.config.message_retention_ms
            version = write_tracked(
                self.messages,
                self._message_due,
                mid,
                rec,
                state,
                view,
                changed,
                due,
                partition,
                offset,
                family,
            )
            if changed:
                record = status_record(mid, state.delivery_id, view, version, self.clock, recipient)
                out.append(record)
                self._kpi(state.delivery_id, old_view, view, partition)
                return
        if is_redelivery(rec, family, offset):
            assert rec is not None
            record = status_record(mid, state.delivery_id, view, rec.version, self.clock, recipient)
            out.append(record)
            self._kpi_add(partition, state.delivery_id)

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
                    out.append(kpi_part_record(delivery_id, partition, rec))
                continue
            counts = KpiCounts.from_dict(rec["c"]) + c if rec else c
            retired = KpiCounts.from_dict(rec["r"]) + r if rec else r
            # Retiring messages moves counts, it does not change them: same version, unsent.
            publish = c != _ZERO or rec is None
            version = max(1, self.epoch) if rec is None else rec["v"] + 1 if publish else rec["v"]
            new_rec = {"c": counts.to_dict(), "r": retired.to_dict(), "v": version}
            self.kpi_parts[key] = new_rec
            if publish:
                out.append(kpi_part_record(delivery_id, partition, new_rec))
        return out

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
        found = self.addresses.get(address)
        reborn_from = 0
        if isinstance(found, Retired):
            if family != Topic.OPERATOR and event["event_time"] < found.retired_at:
                return  # older than the address's tombstone
            reborn_from = found.version
        rec = found if isinstance(found, Tracked) else None
        old_state = rec.state if rec else None
        state = address_health.apply(old_state, family, event, q, self.config.quarantine)
        self._publish_address(
            address, rec, state, state != old_state, partition, offset, family, out, reborn_from
        )

    def _address_time(
        self, address: str, partition: int, offset: int, family: str, out: list[Output]
    ) -> None:
        rec = self.addresses[address]
        if isinstance(rec, Retired):
            del self.addresses[address]  # its marker's time is over
            return
        state = rec.state
        view = address_health.view(state, self.clock)
        if (
            view.state == address_health.VALID
            and state.max_seen is not None
            and self.clock >= state.max_seen + self.config.address_retention_ms
        ):
            self._retire(
                self.addresses, self._address_due, address, rec, self.config.address_retention_ms
            )
            out.append(tombstone(Topic.ADDRESS, address, rec.version, self.clock))
            return
        self._publish_address(address, rec, state, False, partition, offset, family, out)

    def _publish_address(
        self,
        address: str,
        rec: AddressRecord | None,
        state: AddressState,
        state_changed: bool,
        partition: int,
        offset: int,
        family: str,
        out: list[Output],
        reborn_from: int = 0,
    ) -> None:
        # An operator's action may be ahead of the clock (it does not move it): the record
        # then bears the action's time, as the view does.
        now = self.clock if state.max_seen is None else max(self.clock, state.max_seen)
        view = address_health.view(state, now)
        shown = {
            "state": view.state,
            "error_count": view.error_count,
            "reason": view.reason,
            "last_error_time": view.last_error_at,
        }
        changed = rec is None or shown != rec.view
        if changed or state_changed:
            due = state.resets_at if (state.resets_at or -1) >= self.clock else None
            if due is None and view.state == address_health.VALID and state.max_seen is not None:
                due = state.max_seen + self.config.address_retention_ms
            version = write_tracked(
                self.addresses,
                self._address_due,
                address,
                rec,
                state,
                shown,
                changed,
                due,
                partition,
                offset,
                family,
                reborn_from,
            )
            if changed:
                out.append(address_record(address, shown, version, now))
                return
        if is_redelivery(rec, family, offset):
            assert rec is not None
            out.append(address_record(address, shown, rec.version, now))
