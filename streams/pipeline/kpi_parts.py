"""The feedback step's KPI partials: per partition and delivery, the counts of the
partition's messages (table ``kpi_parts``, keyed ``<delivery id>|<partition>``).

A message's change of view is noted as it happens; the partials are written and published
once per tick, not once per event: a crash loses only the changes noted since, and the
reconciliation after the restart redoes them (``reconcile``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streams.domain.recipient.delivery_kpi import KpiCounts, KpiDelta, kpi_delta
from streams.domain.recipient.message_status import MessageView
from streams.pipeline.records import Output, Store, kpi_part_record

_ZERO = KpiCounts()


class KpiPartials:
    """The partials of the partitions a worker holds, over the ``kpi_parts`` table."""

    def __init__(self, table: Store) -> None:
        self.table = table
        # Each delivery's next version after a start or a rebalance is at least this.
        self.epoch = 0
        # Partition → KPI sums recomputed from the messages table, not yet reconciled.
        self._truth: dict[int, dict[str, KpiCounts]] | None = None
        self.checked: set[int] = set()
        # Partition → delivery id → (counts change, retired change) not yet in the table.
        self._pending: dict[int, dict[str, tuple[KpiCounts, KpiCounts]]] = {}
        # Key → (the value last written, its counts and retired counts, decoded): the
        # next flush of the key reads them back without decoding the value again.
        self._written: dict[str, tuple[dict[str, Any], KpiCounts, KpiCounts]] = {}

    def reset(self, epoch: int) -> None:
        """After a rebalance: every partition is reconciled again when next seen."""
        self.epoch = epoch
        self._truth = None
        self.checked.clear()
        self._pending.clear()
        self._written.clear()

    def reconcile(
        self,
        partition: int,
        messages: Iterable[tuple[int, str, MessageView]],
        out: list[Output],
    ) -> None:
        """Make the partition's partials agree with its messages table, given as
        (partition, delivery id, last view published) of every tracked message.

        A message write and its partial's write go to two changelogs; a crash between them
        would leave the partial off for good, since the redelivered event then changes no
        message. So the first time a partition is seen after a start or a rebalance, its
        partials are recomputed from the messages (the authority) plus the retired counts of
        messages that left the table, and published again, each at a version of at least
        ``epoch``: a crash can also lose a partial's own changelog write after its record
        went out, and its next version would then be one the aggregator already has.
        """
        if self._truth is None:
            self._truth = {}
            for p, delivery_id, view in messages:
                sums = self._truth.setdefault(p, {})
                sums[delivery_id] = sums.get(delivery_id, KpiCounts()).add(kpi_delta(None, view))
        truth = self._truth.pop(partition, {})
        self.checked.add(partition)
        suffix = f"|{partition}"
        keys = {k for k in self.table if k.endswith(suffix)}
        keys |= {f"{d}{suffix}" for d in truth}
        for key in keys:
            delivery_id = key[: -len(suffix)]
            rec = self.table.get(key)
            retired = KpiCounts.from_dict(rec["r"]) if rec else KpiCounts()
            want = (truth.get(delivery_id, KpiCounts()) + retired).to_dict()
            if rec is None or rec["c"] != want or rec["v"] < self.epoch:
                version = max(rec["v"] + 1 if rec else 1, self.epoch)
                new_rec = {"c": want, "r": retired.to_dict(), "v": version}
                self.table[key] = new_rec
                self._written.pop(key, None)
                out.append(kpi_part_record(delivery_id, partition, new_rec))

    def change(
        self, partition: int, delivery_id: str, old: MessageView | None, new: MessageView
    ) -> None:
        """Note a message's change of view."""
        delta = kpi_delta(old, new)
        if not delta.is_zero:
            self.add(partition, delivery_id, counts=delta)

    def add(
        self,
        partition: int,
        delivery_id: str,
        counts: KpiDelta | None = None,
        retired: KpiDelta | None = None,
    ) -> None:
        """Note a change of the partial; with no change, the partial is published again."""
        pending = self._pending.setdefault(partition, {})
        c, r = pending.get(delivery_id, (_ZERO, _ZERO))
        pending[delivery_id] = (
            c if counts is None else c.add(counts),
            r if retired is None else r.add(retired),
        )

    def flush(self, partition: int) -> list[Output]:
        """Write the partition's pending changes and publish each changed partial once."""
        out: list[Output] = []
        for delivery_id, (c, r) in self._pending.pop(partition, {}).items():
            key = f"{delivery_id}|{partition}"
            rec = self.table.get(key)
            if c == _ZERO and r == _ZERO:
                if rec is not None:
                    out.append(kpi_part_record(delivery_id, partition, rec))
                continue
            if not rec:
                counts, retired = c, r
            else:
                last = self._written.get(key)
                # The same object: the table holds what this flush wrote last.
                if last is not None and last[0] is rec:
                    counts, retired = last[1] + c, last[2] + r
                else:
                    counts = KpiCounts.from_dict(rec["c"]) + c
                    retired = KpiCounts.from_dict(rec["r"]) + r
            # Retiring messages moves counts, it does not change them: same version, unsent.
            publish = c != _ZERO or rec is None
            version = max(1, self.epoch) if rec is None else rec["v"] + 1 if publish else rec["v"]
            new_rec = {"c": counts.to_dict(), "r": retired.to_dict(), "v": version}
            self.table[key] = new_rec
            self._written[key] = (new_rec, counts, retired)
            if publish:
                out.append(kpi_part_record(delivery_id, partition, new_rec))
        return out
