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

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from streams.domain.bounce.qualifier import Qualifier
from streams.domain.recipient import address_health, message_status
from streams.domain.recipient.address_health import AddressState, QuarantinePolicy
from streams.domain.recipient.delivery_kpi import kpi_delta
from streams.domain.recipient.message_status import MessageState, MessageView, ValidityPolicy
from streams.domain.types import Qualification
from streams.pipeline.keyed_state import DueIndex, is_redelivery, write_tracked
from streams.pipeline.kpi_parts import KpiPartials
from streams.pipeline.records import (
    Output,
    SignalHook,
    Source,
    Store,
    address_record,
    status_record,
    tombstone,
)
from streams.pipeline.table_values import ADDRESSES, MESSAGES, RecordStore, Retired, Tracked
from streams.pipeline.topics import Topic

_DAY_MS = 86_400_000
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
        # Partition (str) → the clock when its last tick was applied, or when its input was
        # last committed (``store_clock``). A restarted worker starts from the largest: the
        # ticks and events that carried it are committed and not read again, and with no new
        # input its own clock would stay behind for good.
        self.clocks: Store = {} if clocks is None else clocks
        self.clock = 0
        # Partitions whose events moved the clock since the last ``store_clock``.
        self._unstored: set[int] = set()
        self._message_due = DueIndex(self.messages)
        self._address_due = DueIndex(self.addresses)
        self._kpis = KpiPartials(kpi_parts)

    def reset_indexes(self, epoch: int = 0) -> None:
        """Call after a rebalance: due indexes and KPI checks are redone lazily. ``epoch``
        is a number larger than any version this partition's KPI partials could have had
        before (the worker gives the wall clock in microseconds): see ``KpiPartials``."""
        self._message_due.reset()
        self._address_due.reset()
        self._kpis.reset(epoch)
        self._unstored.clear()

    def store_clock(
        self, in_partition: Callable[[int], AbstractContextManager[object]] = nullcontext
    ) -> None:
        """Store the clock for every partition whose events moved it since the last call
        (each write inside ``in_partition(partition)``). Call it before each offset
        commit: a worker killed after committing its last input, before a tick stored
        the clock, would leave its successor a clock behind that input's signals, which
        then wait forever for progress no input will bring."""
        for partition in sorted(self._unstored):
            key = str(partition)
            if self.clocks.get(key, 0) < self.clock:
                with in_partition(partition):
                    self.clocks[key] = self.clock
        self._unstored.clear()

    def restore_clock(self) -> None:
        """Catch the clock up with the one stored by the ticks of this or earlier workers."""
        self.clock = max(self.clock, max(self.clocks.values(), default=0))

    def _reconcile_kpis(self, partition: int, out: list[Output]) -> None:
        """The first time a partition is seen after a start or a rebalance, its KPI
        partials are made to agree with its messages table (see ``KpiPartials``)."""
        tracked = self.messages.tracked()
        views = ((rec.partition, rec.state.delivery_id, rec.view) for _mid, rec in tracked)
        self._kpis.reconcile(partition, views, out)

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
            self._unstored.add(partition)
        q = None if operator else qualify_event(self.qualifier, family, event)
        out: list[Output] = []
        if partition not in self._kpis.checked:
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
        if partition not in self._kpis.checked:
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
            self._kpis.add(partition, state.delivery_id, retired=kpi_delta(None, view))
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
                self._kpis.change(partition, state.delivery_id, old_view, view)
                return
        if is_redelivery(rec, family, offset):
            assert rec is not None
            record = status_record(mid, state.delivery_id, view, rec.version, self.clock, recipient)
            out.append(record)
            self._kpis.add(partition, state.delivery_id)

    def flush_kpis(self, partition: int) -> list[Output]:
        """Write the partition's pending KPI partial changes and publish each changed
        partial once (called on every tick of the partition)."""
        return self._kpis.flush(partition)

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
        if (
            address_health.health_at(state, self.clock).state == address_health.VALID
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
        health = address_health.health_at(state, now)
        shown = {
            "state": health.state,
            "error_count": health.error_count,
            "reason": health.reason,
            "last_error_time": health.last_error_at,
        }
        changed = rec is None or shown != rec.view
        if changed or state_changed:
            due = state.resets_at if (state.resets_at or -1) >= self.clock else None
            if due is None and health.state == address_health.VALID and state.max_seen is not None:
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
