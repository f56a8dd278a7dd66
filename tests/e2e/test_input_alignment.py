"""Input alignment with a real worker: started on loaded topics, whose retry partitions run
days ahead of the send partitions in event time, the worker holds the retry partitions back
for a while (``mta_input_partitions_held_back``), and its statuses, address states, KPIs
and throttle settings still equal those of ``replay``."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.testing.sample import SampleCampaign
from streams.testing.services import free_port
from streams.testing.worker import WorkerProcess

from .helpers import produce_paced
from .reference import diff, reference, stream_state

pytestmark = [pytest.mark.broker, pytest.mark.redis, pytest.mark.e2e]

RECIPIENTS = 3000


def _gauges(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    wanted = ("mta_input_partitions_held_back", "mta_sequencer_held_signals")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            out[family.name] = sum(s.value for s in family.samples)
    return out


def test_a_backlog_is_read_aligned_and_results_equal_replay(make_settings, tmp_path):
    # A backlog of a few hundred records per partition counts here (2,000 by default).
    settings = make_settings(align_min_backlog=100, web_port=free_port())
    events = SampleCampaign(recipients=RECIPIENTS, seed=47).events()
    expected = reference(events, settings.partitions)
    produce_paced(settings, events, 0, len(events), flush=True)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    seen: list[dict[str, float]] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):  # not serving yet, or busy with a commit
                seen.append(_gauges(settings.web_port))
            time.sleep(0.1)

    scraper = threading.Thread(target=scrape, daemon=True)
    try:
        worker.start().wait_ready()
        scraper.start()
        got = stream_state(settings, expected, timeout=180)
        assert diff(expected, got) == [], worker.timeline()
        assert "Traceback" not in worker.log_text(), worker.tail()
    finally:
        done.set()
        worker.kill()
    assert max(g.get("mta_input_partitions_held_back", 0) for g in seen) > 0, seen[-3:]
