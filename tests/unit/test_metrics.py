"""The worker's metrics (counted from the output records it sends), its endpoint's port
fallback, and the service's request metrics by route template."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import socket
import time

import pytest
from aiohttp import ClientSession, web
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.pipeline.records import Output
from streams.pipeline.topics import Topic
from streams.runtime import metrics
from streams.runtime.metrics import (
    PORT_TRIES,
    BucketCounts,
    WorkerMetrics,
    WorkerProbes,
    provider_group,
    start_site,
)
from streams.service.metrics_routes import UNMATCHED, HttpMetrics
from streams.serving.views import VIEW_TOPICS


def worker_metrics() -> WorkerMetrics:
    return WorkerMetrics(
        WorkerProbes(
            held_signals=lambda: {1: 4},
            consumer_lag=lambda: {("p.send", 0): 12},
            sink_queue=lambda: 3,
            sink_errors=lambda: 2,
        )
    )


def samples(m: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = m.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def status(status: str, rule: str | None = None, reason: str | None = None) -> Output:
    value = {"status": status, "rule": rule, "failure_reason": reason}
    return Output(Topic.STATUS, "mid-1", value)


def throttle(key: str, scope: str, mode: str) -> Output:
    return Output(Topic.THROTTLE, key, {"key": key, "scope": scope, "mode": mode})


def test_outputs_become_counts_by_status_rule_state_and_throttle_mode():
    m = worker_metrics()
    m.stats.event_in("bounce", "hard")
    m.stats.event_in("bounce", "hard")
    m.stats.dead_letter("invalid")
    m.stats.output(status("failed", "mailbox_unknown", "user_unknown"))
    m.stats.output(status("delivered"))
    m.stats.output(Output(Topic.ADDRESS, "a@x.org", {"state": "quarantined"}))
    m.stats.output(throttle("gmail", "group", "normal"))
    m.stats.output(throttle("gmail", "group", "backoff"))
    m.stats.output(throttle("gmail", "group", "backoff"))  # same mode again: no change
    m.stats.output(throttle("10.0.0.1|gmail", "ip_group", "suspended"))
    got = samples(m)
    assert got[("mta_events_in_total", (("family", "bounce"), ("kind", "hard")))] == 2
    assert got[("mta_dead_letters_total", (("kind", "invalid"),))] == 1
    rule = (("failure_reason", "user_unknown"), ("rule", "mailbox_unknown"))
    assert got[("mta_qualifications_total", rule)] == 1
    assert got[("mta_status_changes_total", (("status", "delivered"),))] == 1
    assert got[("mta_address_changes_total", (("state", "quarantined"),))] == 1
    changes = [(k[1], v) for k, v in got.items() if k[0] == "mta_throttle_changes_total"]
    assert sorted(changes) == [
        ((("group", "gmail"), ("mode", "backoff"), ("scope", "group")), 1),
        ((("group", "gmail"), ("mode", "normal"), ("scope", "group")), 1),
        ((("group", "gmail"), ("mode", "suspended"), ("scope", "ip_group")), 1),
    ]
    assert got[("mta_throttle_keys", (("mode", "backoff"), ("scope", "group")))] == 1
    assert got[("mta_throttle_keys", (("mode", "suspended"), ("scope", "ip_group")))] == 1
    assert got[("mta_throttle_group_mode", (("group", "gmail"), ("mode", "backoff")))] == 1
    assert ("mta_throttle_group_mode", (("group", "gmail"), ("mode", "normal"))) not in got
    assert got[("mta_sequencer_held_signals", (("partition", "1"),))] == 4
    assert got[("mta_consumer_lag_records", (("partition", "0"), ("topic", "p.send")))] == 12
    assert got[("mta_sink_queue_length", ())] == 3
    assert got[("mta_sink_produce_errors_total", ())] == 2


def test_sequencer_waits_are_observed_from_the_write_time():
    m = worker_metrics()
    now = time.time()
    m.released([now - 0.2, now - 20])
    got = samples(m)
    assert got[("mta_sequencer_wait_seconds_count", ())] == 2
    assert got[("mta_sequencer_wait_seconds_bucket", (("le", "0.25"),))] == 1
    assert got[("mta_sequencer_wait_seconds_bucket", (("le", "30.0"),))] == 2


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=50))
def test_bucket_counts_expose_what_a_prometheus_histogram_would(values):
    ours = BucketCounts(metrics.WAIT_BUCKETS)
    registry = CollectorRegistry()
    theirs = Histogram("h", "h", buckets=metrics.WAIT_BUCKETS, registry=registry)
    for value in values:
        ours.observe(value)
        theirs.observe(value)
    mine = {(s.name, s.labels.get("le")): s.value for s in ours.family("h", "h").samples}
    (family,) = registry.collect()
    reference = {
        (s.name, s.labels.get("le")): s.value for s in family.samples if "created" not in s.name
    }
    assert mine.keys() == reference.keys()
    for key, value in reference.items():
        assert mine[key] == pytest.approx(value), key


def test_gc_pauses_are_timed_and_one_timer_stays_installed():
    worker_metrics()
    m = worker_metrics()
    assert sum(isinstance(c, metrics.GcTimer) for c in gc.callbacks) == 1
    gc.collect()
    assert samples(m)[("mta_gc_pause_seconds_count", (("generation", "2"),))] >= 1


def test_provider_groups_of_throttle_keys():
    assert provider_group("group", "gmail") == "gmail"
    assert provider_group("ip_group", "192.0.2.7|outlook") == "outlook"
    assert provider_group("domain", "example.org") == "(domain)"


def test_the_view_topics_are_those_the_view_updater_reads():
    assert set(metrics.VIEW_TOPICS) == set(VIEW_TOPICS)


addresses = st.emails()


@given(st.lists(st.tuples(addresses, st.sampled_from(["valid", "quarantined", "denylisted"]))))
def test_no_address_or_key_of_an_output_becomes_a_label(records):
    m = worker_metrics()
    for address, state in records:
        m.stats.output(Output(Topic.ADDRESS, address, {"address": address, "state": state}))
        m.stats.output(Output(Topic.STATUS, address, {"status": "failed", "rule": None}))
        m.stats.output(throttle(address.split("@")[1], "domain", "backoff"))
    labels = {value for _name, pairs in samples(m) for _k, value in pairs}
    assert not labels & {a for a, _ in records}
    assert not labels & {a.split("@")[1] for a, _ in records}


def test_a_taken_port_moves_the_endpoint_to_the_next_free_one():
    async def run() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            taken = probe.getsockname()[1]
        if taken + 1 > 65535:
            pytest.skip("no port above the probe")
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            holder.bind(("127.0.0.1", taken))
            holder.listen()
            runner, port = await start_site(web.Application(), "127.0.0.1", taken)
            try:
                assert taken < port < taken + PORT_TRIES
            finally:
                await runner.cleanup()

    asyncio.run(run())


def test_no_free_port_in_the_range_is_a_clear_error(monkeypatch):
    class Busy(web.TCPSite):
        async def start(self) -> None:
            raise OSError(errno.EADDRINUSE, "in use")

    monkeypatch.setattr(metrics.web, "TCPSite", Busy)
    with pytest.raises(OSError, match=f"ports 9108-{9108 + PORT_TRIES - 1} are in use"):
        asyncio.run(start_site(web.Application(), "127.0.0.1", 9108))


def test_requests_are_counted_by_route_template_and_status():
    http = HttpMetrics()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"address": request.match_info["address"]})

    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    async def run() -> None:
        app = web.Application(middlewares=[http.middleware()])
        app.router.add_get("/v1/addresses/{address}", hello)
        app.router.add_get("/broken", broken)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with ClientSession() as session:
                for path in ("/v1/addresses/a@x.org", "/v1/addresses/b@y.org", "/nothing/c@z.org"):
                    async with session.get(f"http://127.0.0.1:{port}{path}"):
                        pass
                async with session.get(f"http://127.0.0.1:{port}/broken") as response:
                    assert response.status == 500
        finally:
            await runner.cleanup()

    asyncio.run(run())
    text = generate_latest(http.registry).decode()
    got = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "mta_http_requests"
        for s in family.samples
        if s.name == "mta_http_requests_total"
    }
    template = (("method", "GET"), ("route", "/v1/addresses/{address}"), ("status", "200"))
    assert got[template] == 2
    assert got[(("method", "GET"), ("route", UNMATCHED), ("status", "404"))] == 1
    assert got[(("method", "GET"), ("route", "/broken"), ("status", "500"))] == 1
    assert "@" not in text


def test_readiness_is_503_with_the_failing_check_named():
    readiness = metrics.Readiness(
        broker=lambda: True, redis=lambda: False, assigned=lambda: True, recovered=lambda: True
    )
    checks = asyncio.run(readiness.report())
    assert checks == {"assigned": True, "recovered": True, "broker": True, "redis": False}
    response = metrics.readiness_response(checks)
    assert response.status == 503
    assert json.loads(response.text) == {"status": "not ready", "checks": checks}
    without_redis = metrics.Readiness(
        broker=lambda: True, redis=None, assigned=lambda: True, recovered=lambda: True
    )
    assert metrics.readiness_response(asyncio.run(without_redis.report())).status == 200


def test_table_keys_and_tombstones_are_exposed():
    m = WorkerMetrics(
        WorkerProbes(
            held_signals=dict,
            consumer_lag=dict,
            sink_queue=lambda: 0,
            sink_errors=lambda: 0,
            table_keys=lambda: {"messages": 7, "addresses": 5},
        )
    )
    m.stats.output(Output(Topic.STATUS, "mid-1", None))
    m.stats.output(Output(Topic.ADDRESS, "a@x.org", None))
    m.stats.output(Output(Topic.ADDRESS, "b@x.org", None))
    got = samples(m)
    assert got[("mta_table_keys", (("table", "messages"),))] == 7
    assert got[("mta_table_keys", (("table", "addresses"),))] == 5
    assert got[("mta_tombstones_total", (("topic", "status"),))] == 1
    assert got[("mta_tombstones_total", (("topic", "address"),))] == 2
    assert ("mta_status_changes_total", (("status", "None"),)) not in got
