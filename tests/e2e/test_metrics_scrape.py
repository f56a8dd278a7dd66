"""End to end: a real worker and a real ``mta-feedback serve`` answer /metrics, /healthz and
/readyz over HTTP, and every metric the Grafana dashboard queries is in their scrapes."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from integration.service import ServiceProcess
from prometheus_client.parser import text_string_to_metric_families

from streams.runtime.producer import EventProducer
from streams.testing.sample import SampleCampaign
from streams.testing.worker import WorkerProcess

pytestmark = [pytest.mark.broker, pytest.mark.redis, pytest.mark.e2e]

DASHBOARD = Path(__file__).resolve().parents[2] / "docker/grafana/dashboards/mta-feedback.json"
_PORT = re.compile(r"metrics and health on port (\d+)")
# Names in PromQL: identifiers not followed by "(" (functions) and not label names or
# keywords; label matchers and grouping clauses are stripped first.
_NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "le", "bool"}


def query_metric_names(expr: str) -> set[str]:
    stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(by|without)\s*\([^)]*\)", "", expr)
    return {
        name
        for name in _NAME.findall(stripped)
        if name not in _KEYWORDS and not re.fullmatch(r"[\d.e]+", name)
    }


def test_query_metric_names_finds_metrics_not_functions_or_labels():
    expr = 'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{x="y"}[5m]))) + b_total'
    assert query_metric_names(expr) == {"a_bucket", "b_total"}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample_names(text: str) -> set[str]:
    """Every sample name of a scrape, and every family name (a labelled family that has no
    sample yet still announces its type)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def values(text: str) -> dict[str, float]:
    """Unlabelled samples of a scrape by name."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def wait_port(worker: WorkerProcess, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _PORT.search(worker.log_text())
        if found:
            return int(found.group(1))
        time.sleep(0.2)
    raise TimeoutError(f"no metrics port in the worker's log:\n{worker.tail()}")


def wait_ready(url: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = get(url)
        if status == 200 or time.monotonic() > deadline:
            return {"status_code": status, **json.loads(body)}
        time.sleep(0.5)


def test_worker_and_service_expose_every_metric_the_dashboard_queries(make_settings, tmp_path):
    settings = make_settings()
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    service = ServiceProcess(settings, tmp_path / "serve.log")
    try:
        worker.wait_ready()
        base = f"http://127.0.0.1:{wait_port(worker)}"
        assert get(f"{base}/healthz") == (200, '{"status": "ok"}')
        ready = wait_ready(f"{base}/readyz")
        assert ready["status_code"] == 200, ready
        assert ready["checks"] == {
            "assigned": True,
            "recovered": True,
            "broker": True,
            "redis": True,
        }

        with EventProducer(settings) as producer:
            for family, event in SampleCampaign(recipients=40, seed=7).events():
                producer.send(family, event)
        deadline = time.monotonic() + 90
        while (waits := values(scrape := get(f"{base}/metrics")[1])).get(
            "mta_sequencer_wait_seconds_count", 0
        ) == 0:
            assert time.monotonic() < deadline, f"no signal released:\n{scrape}"
            time.sleep(0.5)
        # Seconds since the signal's write (units right: neither 0 nor a clock's worth).
        mean = waits["mta_sequencer_wait_seconds_sum"] / waits["mta_sequencer_wait_seconds_count"]
        assert 0 < mean < 60
        assert 'mta_events_in_total{family="send",kind="relayed"}' in scrape
        assert 'mta_status_changes_total{status="' in scrape
        assert 'mta_consumer_lag_records{partition="0",topic="' in scrape
        assert 'mta_view_lag_records{topic="status"}' in scrape

        service.start()
        service_base = f"http://{service.host}:{service.port}"
        assert get(f"{service_base}/readyz")[0] == 200
        assert get(f"{service_base}/v1/no-such-route/someone@example.com")[0] == 404
        status, service_scrape = get(f"{service_base}/metrics")
        assert status == 200
        # Counted by template: no path, so no address, becomes a label value.
        assert "someone@example.com" not in service_scrape
        assert 'route="(unmatched)"' in service_scrape
        assert 'route="/readyz"' in service_scrape
    finally:
        if service.alive():
            service.stop()
        worker.stop()

    scraped = sample_names(scrape) | sample_names(service_scrape)
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = query_metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            missing = names - scraped
            assert not missing, f"panel {panel['title']!r} queries {missing}, not scraped"
