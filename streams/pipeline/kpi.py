"""The KPI step: sums the per-partition KPI partials of each delivery."""

from __future__ import annotations

from typing import Any

from streams.domain.recipient.delivery_kpi import KpiCounts
from streams.pipeline.records import Output, Store, kpi_record
from streams.pipeline.topics import Topic


class KpiAggregator:
    """Sums the per-partition KPI partials of each delivery (keyed by delivery id).

    Each partial carries its partition's full counts and a version, so applying one is
    idempotent and order-tolerant: the newest version per partition wins.

    Consumers keep the highest version of a delivery's record. A crash can lose the
    table write of a record that went out, and the next record would then repeat its
    version; so after a start or a rebalance (``begin``) each delivery's next version is
    at least ``epoch``, a number larger than any version it had before.
    """

    def __init__(self, sums: Store) -> None:
        self.sums = sums
        self.epoch = 0

    def begin(self, epoch: int) -> None:
        """Call after a rebalance, with the worker's wall clock in microseconds."""
        self.epoch = epoch

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
        version = max(rec["v"] + 1 if rec else 1, self.epoch)
        new_rec = {"parts": parts, "v": version, "src": offset}
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
            Topic.KPI, delivery_id, kpi_record(delivery_id, self.total(rec), rec["v"], now_ms)
        )
