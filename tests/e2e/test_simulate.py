"""End to end: the closed-loop simulator against a worker subprocess and the real broker."""

from __future__ import annotations

import pytest

from streams.sim.campaign import CampaignSpec
from streams.sim.kafka_control import KafkaControlPlane
from streams.sim.runner import SimConfig, simulate
from streams.testing.worker import WorkerProcess

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

GOOGLE_BASELINE = 36_000


def test_short_adaptive_run_follows_the_workers_throttle_records(make_settings, tmp_path):
    settings = make_settings()
    worker = WorkerProcess(settings, tmp_path / "worker.log", views=False).start()
    try:
        worker.wait_ready()
        control = KafkaControlPlane(settings, timeout_s=60)
        try:
            # Few recipients on two providers with a tenth of their capacity: the first
            # minute at the baselines draws rate-limit replies, the worker lowers the limits.
            spec = CampaignSpec(
                400,
                5,
                "E2E-SIM",
                mailbox_full_share=0.0,
                domain_mix=(("gmail.com", 0.7), ("yahoo.com", 0.3)),
            )
            result = simulate(SimConfig(campaign=spec, capacity_scale=0.1), control)
            throttle = dict(control.throttle())
        finally:
            control.close()
        assert worker.alive()
    finally:
        worker.stop()
    s = result.summary
    assert s["control_plane"] == "kafka"
    assert s["sent"] + s["failed"] == 400
    assert s["deferrals"] > 0 and s["hard_bounces"] > 0
    kpi = s["pipeline_kpi"]
    assert kpi is not None and kpi["to_deliver"] == 400 and kpi["pending"] == 0
    assert (kpi["sent"], kpi["failed"]) == (s["sent"], s["failed"])
    # The worker published settings, and the simulated MTA sent within them.
    assert s["throttle_records"] > 0
    assert any(k == "group:google" or k.endswith("|google") for k in throttle)
    limits = [st.limits["google"] for st in result.timeline if "google" in st.limits]
    assert limits[0] == GOOGLE_BASELINE and min(limits) < GOOGLE_BASELINE
    for st in result.timeline:
        if "google" in st.rows:
            assert st.rows["google"][0] <= 2 * max(st.limits["google"] / 60, 1)
    assert "Traceback" not in worker.log_text()
