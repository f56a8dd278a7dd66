"""The KPI partials of the feedback step: what a flush writes and reads back."""

from streams.domain.recipient.delivery_kpi import KpiCounts, KpiDelta
from streams.pipeline.kpi_parts import KpiPartials

ONE = KpiDelta(to_deliver=1, taken_into_account=1)


def _counts(table: dict, key: str = "d1|0") -> KpiCounts:
    return KpiCounts.from_dict(table[key]["c"])


def test_each_flush_adds_the_pending_change_to_what_the_table_holds():
    table: dict = {}
    parts = KpiPartials(table)
    for expected in (1, 2, 3):
        parts.add(0, "d1", counts=ONE)
        [out] = parts.flush(0)
        assert _counts(table).to_deliver == expected == out.value["c"]["to_deliver"]
        assert table["d1|0"]["v"] == expected


def test_a_value_replaced_beneath_the_partials_is_read_from_the_table():
    """A restored changelog, or another worker before a rebalance, wrote the key: the
    counts kept from the last flush no longer apply."""
    table: dict = {}
    parts = KpiPartials(table)
    parts.add(0, "d1", counts=ONE)
    parts.flush(0)
    restored = KpiCounts(to_deliver=10, taken_into_account=10)
    table["d1|0"] = {"c": restored.to_dict(), "r": KpiCounts(sent=4).to_dict(), "v": 7}
    parts.add(0, "d1", counts=ONE, retired=KpiDelta(sent=1))
    parts.flush(0)
    assert _counts(table) == restored.add(ONE)
    assert KpiCounts.from_dict(table["d1|0"]["r"]) == KpiCounts(sent=5)
    assert table["d1|0"]["v"] == 8
