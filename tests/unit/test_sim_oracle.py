"""The oracle: a coordinate search over multipliers of hidden capacities, within its budget."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping

import pytest
from factories import JAN_2026

from streams.sim import cli
from streams.sim.campaign import CampaignSpec
from streams.sim.control import InProcessControlPlane
from streams.sim.oracle import BUDGET, GRID, REFINE, choose, run_oracle, search
from streams.sim.runner import ALL, LabelStats, SimConfig

KNEE = {"big": 0.93, "small": 0.62}  # the synthetic providers' true capacity, as multipliers
WORK = {"big": 10_000, "small": 500}  # seconds of sending at a multiplier of 1


def synthetic(calls: list[Mapping[str, float]]):
    """Above its knee a provider defers (soft failures) and the retries cost 900 s."""

    def evaluate(ms: Mapping[str, float]) -> dict[str, LabelStats]:
        calls.append(dict(ms))
        out = {}
        for label, knee in KNEE.items():
            m = ms.get(label, ms.get(ALL, 1.0))
            over = m > knee
            finish = round(WORK[label] / min(m, knee)) + (900 if over else 0)
            out[label] = LabelStats(finish, round(max(0.0, m - knee) * 1000), 100)
        return out

    return evaluate


def test_search_finds_the_best_multiplier_within_its_budget():
    calls: list[Mapping[str, float]] = []
    found = search(synthetic(calls))
    assert found.runs == len(calls) == len(GRID) + 2 * len(REFINE) <= BUDGET
    big = found.multipliers["big"]
    assert 0.9 <= big <= KNEE["big"]  # the largest rate that draws no deferral, to 2.5%
    # The small provider only has to finish in the big one's time: no deferral at all.
    small = found.multipliers["small"]
    assert small <= KNEE["small"]
    assert WORK["small"] / small <= WORK["big"] / big + 60


def test_search_refuses_a_budget_it_cannot_keep():
    with pytest.raises(ValueError, match="budget"):
        search(synthetic([]), budget=len(GRID))


def test_choice_keeps_deliveries_first_then_time_then_soft_failures():
    evals = {
        "a": [
            (0.5, LabelStats(2000, 0, 90)),
            (1.0, LabelStats(1000, 5, 100)),
            (1.5, LabelStats(990, 80, 100)),
        ],
        "b": [(0.5, LabelStats(1050, 0, 10)), (1.0, LabelStats(500, 3, 10))],
    }
    # a: 0.5 loses deliveries; 1.5 is within the time tolerance of 1.0 but defers more.
    # b: 0.5 finishes within 1000 s + 60 s with no soft failure.
    assert choose(evals) == {"a": 1.0, "b": 0.5}


def test_oracle_run_reports_its_limits_per_ip_and_its_search():
    spec = CampaignSpec(
        300, 5, "O", mailbox_full_share=0.0, domain_mix=(("gmail.com", 0.6), ("yahoo.com", 0.4))
    )
    config = SimConfig(mode="oracle", campaign=spec, start_ms=JAN_2026, capacity_scale=0.05)
    result = run_oracle(config, InProcessControlPlane())
    s = result.summary
    assert s["mode"] == "oracle" and s["sent"] + s["failed"] == 300
    oracle = s["oracle"]
    assert oracle["search_runs"] <= oracle["budget"] == BUDGET
    limits = oracle["limits_per_hour"]
    assert set(limits) >= {"google", "yahoo"}
    yahoo = limits["yahoo"]  # the second IP has a weaker reputation there
    assert yahoo["192.0.2.11"] < yahoo["192.0.2.10"]
    assert s["pipeline_kpi"]["to_deliver"] == 300


def test_mode_all_prints_one_line_per_mode(capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        ["--mode", "all", "--recipients", "150", "--seed", "2", "--in-process"]
    )
    assert cli.run(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["mode"] for line in lines] == ["adaptive", "static", "oracle"]
    assert all(line["scenario"] == "steady" for line in lines)
    assert "multipliers" in lines[2]["oracle"]
