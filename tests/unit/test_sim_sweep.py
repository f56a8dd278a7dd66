"""The sweep: its table from result rows (pure), its grid parsing and its resumable runs."""

from __future__ import annotations

from typing import Any

import pytest

from streams.sim import sweep, sweep_table


def row(mode: str, seed: int, soft: int, ttd: int, success: float = 98.0, **kw: Any):
    base = {"scenario": "steady", "size": 2000, "recipients": 2000}
    return {
        **base,
        "mode": mode,
        "seed": seed,
        "soft_bounces": soft,
        "time_to_deliver_s": ttd,
        "success_pct": success,
        **kw,
    }


def steady_rows() -> list[dict[str, Any]]:
    return [
        row("static", 100, 1000, 3000),
        row("adaptive", 100, 50, 1000),
        row("oracle", 100, 40, 950),
        row("static", 101, 1000, 3000),
        row("adaptive", 101, 200, 3100, success=97.5),
        row("oracle", 101, 40, 1000),
    ]


def test_cells_take_medians_worst_cases_and_targets_per_seed():
    [cell] = sweep_table.build_cells(steady_rows())
    assert (cell.size, cell.scenario, cell.seeds) == (2000, "steady", [100, 101])
    assert cell.metrics["soft_cut"] == pytest.approx([0.95, 0.8])
    assert cell.metrics["time_vs_static"] == pytest.approx([1000 / 3000, 3100 / 3000])
    # Seed 101: 80% cut (and 10% of recipients), 100 s slower (over 60 s and 2%), lower
    # Success %, 3.1x the oracle's time and 5x its soft bounces.
    assert cell.misses == {"soft": [101], "time": [101], "success": [101], "oracle": [101]}


def test_markdown_lists_seeds_medians_worst_and_the_targets():
    text = sweep_table.markdown(steady_rows(), "mta-feedback simulate --sweep --seeds 100-101")
    assert "`mta-feedback simulate --sweep --seeds 100-101`" in text
    [line] = [x for x in text.splitlines() if x.startswith("| 2,000")]
    cols = [c.strip() for c in line.strip("|").split("|")]
    assert cols[:4] == ["2,000", "steady", "100-101", "87.5% (80.0%)"]
    assert cols[4] == "-"  # rows without blocks: no throttle-caused figure
    assert cols[6] == "-0.25 (-0.50)"
    assert cols[-2] == "-"
    assert cols[-1].startswith("soft (1/2: 101), time (1/2: 101)")


def test_a_cell_meets_targets_by_the_floor_and_recurring_relearns():
    first, second = {"soft_bounces": 40}, {"soft_bounces": 8}
    rows = [
        row("static", 1, 12, 600, scenario="recurring"),
        # 9 soft bounces: a 25% cut only, but at most 0.5% of 2,000 recipients.
        row("adaptive", 1, 9, 650, scenario="recurring", campaigns=[first, second]),
    ]
    [cell] = sweep_table.build_cells(rows)
    assert cell.targets == ("soft", "time", "success", "relearn")
    assert all(not seeds for seeds in cell.misses.values())
    assert cell.metrics["second_vs_first"] == [0.2]
    assert "time_vs_oracle" not in cell.metrics  # no oracle run: no such figure


def test_throttle_caused_soft_bounces_have_their_own_targets():
    # Full mailboxes keep the total soft bounces up; deferrals + blocks fall by 95%.
    static = row("static", 1, 200, 900, deferrals=190, blocks=10, scenario="recurring")
    first = {"soft_bounces": 150, "deferrals": 60, "blocks": 0, "recipients": 2000}
    second = {"soft_bounces": 100, "deferrals": 11, "blocks": 0, "recipients": 2000}
    adaptive = row(
        "adaptive", 1, 110, 900, deferrals=10, blocks=0, scenario="recurring",
        campaigns=[first, second],
    )  # fmt: skip
    [cell] = sweep_table.build_cells([static, adaptive])
    assert cell.metrics["throttle_cut"] == pytest.approx([0.95])
    assert cell.metrics["second_vs_first_throttle"] == pytest.approx([11 / 60])
    assert cell.misses["soft"] == [1] and cell.misses["relearn"] == [1]
    assert cell.misses["soft-throttle"] == [] and cell.misses["relearn-throttle"] == []
    # One more deferral in the second campaign than 25% and 0.5% allow: missed.
    second["deferrals"] = 16
    [cell] = sweep_table.build_cells([static, adaptive])
    assert cell.misses["relearn-throttle"] == [1]


def test_seed_lists_and_grids_parse():
    assert sweep_table.seed_list([103, 100, 101, 102, 107, 109, 110]) == "100-103, 107, 109-110"
    assert sweep.parse_ints("100-103,107") == [100, 101, 102, 103, 107]
    assert sweep.parse_scenarios("steady,outage") == ["steady", "outage"]
    with pytest.raises(ValueError, match="not a number"):
        sweep.parse_ints("2k")
    with pytest.raises(ValueError, match="unknown scenarios"):
        sweep.parse_scenarios("steady,flood")


def test_sweep_appends_results_and_reuses_them(tmp_path):
    ran: list[tuple[str, int, int, str]] = []

    def fake(scenario: str, size: int, seed: int, mode: str) -> dict[str, Any]:
        ran.append((scenario, size, seed, mode))
        soft = {"static": 100, "adaptive": 5, "oracle": 4}[mode]
        return row(mode, seed, soft, 600, scenario=scenario, size=size, recipients=size)

    def grid(seeds: list[int]) -> str:
        path = sweep.run_sweep([2000], seeds, ["outage"], tmp_path, "cmd", lambda _: None, fake)
        return path.read_text()

    grid([1])
    assert len(ran) == 3
    text = grid([1, 2])  # only seed 2 is new
    assert len(ran) == 6 and ran[3:] == [("outage", 2000, 2, m) for m in sweep_table.MODES]
    assert "| 2,000 | outage | 1-2 | 95.0% (95.0%) |" in text
    assert len((tmp_path / sweep.RESULTS).read_text().splitlines()) == 6
