"""``mta-feedback bench`` end to end, small: every figure is measured and consistent."""

from __future__ import annotations

import pytest

from streams.tools import bench

pytestmark = [pytest.mark.broker, pytest.mark.e2e]


# Two workers: one consumer group over the same topics, its rate and summed CPU and RSS.
# One worker is the same code path with a group of one.
def test_bench_measures_every_figure(make_settings):
    workers = 2
    result = bench.run(
        20_000, latency_seconds=2.0, base=make_settings(), feedback_triggers=20, workers=workers
    )
    assert result["events"] == 20_000
    assert result["workers"] == workers
    assert 0 < result["tracked_messages"] < result["events"]
    for rate in ("baseline_eps", "bare_agent_eps", "pipeline_eps"):
        assert result[rate] > 0, rate
    assert result["ratio"] == pytest.approx(
        result["pipeline_eps"] / result["baseline_eps"], abs=1e-3
    )
    # The pipeline does the bare agent's work and much more.
    assert result["worker_cpu_ms_per_1k_events"] > result["bare_agent_cpu_ms_per_1k_events"]
    assert result["latency_rate_eps"] == pytest.approx(result["pipeline_eps"] / 2, abs=0.1)
    assert result["latency_received"] == result["latency_events"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert 0 < result["latency_machine_cpu_pct"] <= 100
    assert result["feedback_received"] == result["feedback_triggers"] == 20
    assert 0 < result["feedback_p50_ms"] <= result["feedback_p99_ms"]
    assert result["peak_rss_mb"] > result["start_rss_mb"] > 0
