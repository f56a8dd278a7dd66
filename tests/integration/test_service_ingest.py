"""The HTTP ingest endpoints over real sockets: a ``mta-feedback serve`` subprocess, the
embedded broker, records read back from the topics."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import uuid

import pytest

from streams.adapters.base import Event, Skip
from streams.adapters.kumomta import KumoMtaConverter
from streams.adapters.sparkpost import SparkPostConverter
from streams.pipeline.topics import input_key
from streams.runtime.codec import Codec
from streams.runtime.config import Settings
from streams.runtime.vendor_records import to_record
from streams.testing.worker import settings_env

from .mta_records import kumo_record, kumo_records, sparkpost_batch, sparkpost_event
from .service import INPUTS, ServiceProcess, input_events, read_topic

pytestmark = [pytest.mark.broker, pytest.mark.redis]

convert_item = SparkPostConverter().convert_item
convert_record = KumoMtaConverter().convert_record

USER, PASSWORD = "sparkpost", "hook-secret"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
CREDENTIALS = {"MTA_WEBHOOK_USER": USER, "MTA_WEBHOOK_PASSWORD": PASSWORD}


@pytest.fixture
def serve(tmp_path):
    """Start services; each must stop cleanly (exit 0, nothing undelivered, no traceback)."""
    started: list[ServiceProcess] = []

    def start(settings, env=None, args=()) -> ServiceProcess:
        log = tmp_path / f"serve-{len(started)}.log"
        started.append(ServiceProcess(settings, log, env, args).start())
        return started[-1]

    yield start
    for service in started:
        assert service.stop() == 0, service.log_text()
        assert "mta-feedback serve: stopped" in service.log_text()
        assert "Traceback" not in service.log_text(), service.log_text()


def expected(settings, elements, convert, source):
    """What the service must make of ``elements``: events by family, skips, bad indexes."""
    codec = Codec()
    names = {f: settings.topic(f) for f in INPUTS}
    events: dict[str, list[dict]] = {f: [] for f in INPUTS}
    skipped, bad = 0, []
    for index, element in enumerate(elements):
        results = convert(element)
        for result in results:
            if isinstance(result, Skip):
                skipped += 1
                continue
            record = to_record(codec, result, source, index, names)
            if isinstance(result, Event) and record.error is None:
                events[result.family].append(result.event)
            else:
                bad.append(index)
    return events, skipped, bad


def assert_arrived(settings, events):
    got = input_events(settings, {f: len(v) for f, v in events.items()})
    for family in INPUTS:
        want = {e["event_id"]: e for e in events[family]}
        have = {r.value["event_id"]: r for r in got[family]}
        assert sorted(have) == sorted(want), family
        for event_id, record in have.items():
            assert record.key == input_key(want[event_id]["recipient"])
            for name in ("message_id", "delivery_id", "kind", "event_time"):
                assert record.value[name] == want[event_id][name], (family, name)


def test_a_sparkpost_batch_of_1000_events_reaches_the_input_topics(make_settings, serve):
    settings = make_settings()
    service = serve(settings, CREDENTIALS)
    batch = sparkpost_batch(1000, uuid.uuid4().hex[:8])
    events, skipped, bad = expected(settings, batch, convert_item, "http:/webhooks/sparkpost")
    assert bad == [] and sum(map(len, events.values())) > 700 and skipped > 0
    answer = service.post("/webhooks/sparkpost", json.dumps(batch).encode(), headers=AUTH)
    assert answer.status == 200, answer
    assert answer.body == {
        "accepted": sum(map(len, events.values())),
        "skipped": skipped,
        "bad": [],
    }
    assert_arrived(settings, events)
    assert read_topic(settings, "dlq", 0, linger=1.0) == []


def test_a_mixed_batch_answers_200_with_its_bad_records_which_are_dead_lettered(
    make_settings, serve
):
    settings = make_settings()
    service = serve(settings, CREDENTIALS)
    tag = uuid.uuid4().hex[:8]
    batch: list = sparkpost_batch(12, tag)
    no_recipient = sparkpost_event("delivery", 90, tag)
    del no_recipient["msys"]["message_event"]["rcpt_to"]
    del no_recipient["msys"]["message_event"]["raw_rcpt_to"]
    bad_time = sparkpost_event("bounce", 91, tag)
    bad_time["msys"]["message_event"]["timestamp"] = "yesterday-ish"
    bad_address = sparkpost_event("delivery", 92, tag)
    bad_address["msys"]["message_event"]["rcpt_to"] = "not-an-address"
    bad_address["msys"]["message_event"]["raw_rcpt_to"] = "not-an-address"
    for index, element in ((2, 42), (5, no_recipient), (7, bad_time), (9, bad_address)):
        batch.insert(index, element)
    events, skipped, bad = expected(settings, batch, convert_item, "http:/webhooks/sparkpost")
    assert bad == [2, 5, 7, 9]

    answer = service.post("/webhooks/sparkpost", json.dumps(batch).encode(), headers=AUTH)
    assert answer.status == 200, answer
    assert answer.bad_indexes() == [2, 5, 7, 9]
    assert answer.body["accepted"] == sum(map(len, events.values()))
    assert answer.body["skipped"] == skipped
    assert all(b["reason"] for b in answer.body["bad"])

    dead = read_topic(settings, "dlq", 4)
    assert len(dead) == 4  # exactly one each
    reasons = {b["index"]: b["reason"] for b in answer.body["bad"]}
    for record in dead:
        letter = record.value
        assert letter["source_topic"] == "http:/webhooks/sparkpost"
        assert letter["error"] == reasons[letter["source_offset"]]
        assert letter["error_kind"] in ("vendor", "invalid")
    raw = {r.value["source_offset"]: r.value["value"].decode() for r in dead}
    assert raw[2] == "42"
    assert "yesterday-ish" in raw[7]
    assert "not-an-address" in raw[9]
    assert_arrived(settings, events)


def test_a_ping_an_empty_batch_and_a_body_that_is_not_json(make_settings, serve):
    settings = make_settings()
    service = serve(settings)  # no Basic auth configured: the route is open
    for body in (b'[{"msys":{}}]', b"[]"):
        answer = service.post("/webhooks/sparkpost", body)
        assert answer.status == 200 and answer.body["bad"] == [] and answer.body["accepted"] == 0
    for path in ("/webhooks/sparkpost", "/webhooks/kumomta", "/publish_log_v1"):
        answer = service.post(path, b"<html>this is not JSON</html>")
        assert answer.status == 200, answer
        assert answer.body["accepted"] == 0 and answer.bad_indexes() == [0]
        assert "not JSON" in answer.body["bad"][0]["reason"]
    dead = read_topic(settings, "dlq", 3)
    assert sorted(r.value["source_topic"] for r in dead) == [
        "http:/publish_log_v1",
        "http:/webhooks/kumomta",
        "http:/webhooks/sparkpost",
    ]
    assert {r.value["value"] for r in dead} == {b"<html>this is not JSON</html>"}


def test_sparkpost_basic_auth(make_settings, serve):
    settings = make_settings()
    service = serve(settings, CREDENTIALS)
    body = json.dumps(sparkpost_batch(4, uuid.uuid4().hex[:8])).encode()
    wrong = "Basic " + base64.b64encode(f"{USER}:nope".encode()).decode()
    for headers in ({}, {"Authorization": wrong}, {"Authorization": "Bearer " + PASSWORD}):
        answer = service.post("/webhooks/sparkpost", body, headers=headers)
        assert answer.status == 401, headers
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="mta-feedback"')
    answer = service.post("/webhooks/sparkpost", body, headers=AUTH)
    assert answer.status == 200
    events, _, _ = expected(settings, json.loads(body), convert_item, "")
    assert_arrived(settings, events)  # once: the refused requests wrote nothing


def test_bodies_over_the_limit_answer_413_before_being_read(make_settings, serve):
    settings = make_settings()
    service = serve(settings, {"MTA_HTTP_MAX_BODY_BYTES": "65536"})
    record = json.dumps(kumo_record("Delivery", 1, uuid.uuid4().hex[:8])).encode()
    padded = record + b" " * (65536 - len(record))
    assert service.post("/publish_log_v1", padded).status == 200  # at the limit
    assert service.post("/publish_log_v1", padded + b" ").status == 413
    started = time.monotonic()
    answer = service.post("/webhooks/kumomta", b"x" * 20_000_000)
    assert answer.status == 413 and "MTA_HTTP_MAX_BODY_BYTES" in answer.body["error"]["message"]
    assert time.monotonic() - started < 10
    chunks = (b"[" + b" " * 8191 for _ in range(12))  # chunked: no Content-Length
    assert service.post("/webhooks/sparkpost", chunks).status == 413
    assert service.post("/publish_log_v1", record).status == 200
    assert service.alive()


def test_a_caller_hanging_up_mid_body_takes_nothing(make_settings, serve):
    settings = make_settings()
    service = serve(settings)
    for framing in (b"Content-Length: 1000", b"Transfer-Encoding: chunked"):
        with socket.create_connection((service.host, service.port)) as raw:
            raw.sendall(b"POST /webhooks/kumomta HTTP/1.1\r\nHost: x\r\n" + framing)
            raw.sendall(b"\r\n\r\n" + (b"5\r\n" if b"chunked" in framing else b"") + b'{"a":')
            time.sleep(0.2)
    record = json.dumps(kumo_record("Delivery", 1, uuid.uuid4().hex[:8])).encode()
    assert service.post("/publish_log_v1", record).status == 200
    assert "the caller left before sending its whole body" in service.log_text()
    assert read_topic(settings, "dlq", 0, linger=0.5) == []


def test_kumo_routes_refuse_untrusted_addresses(make_settings, serve):
    settings = make_settings()
    service = serve(settings, {"MTA_HTTP_TRUSTED_CIDRS": "127.0.0.1/32", **CREDENTIALS})
    record = json.dumps(kumo_record("Delivery", 1, uuid.uuid4().hex[:8])).encode()
    basic = AUTH
    for method, path in (
        ("POST", "/publish_log_v1"),
        ("POST", "/webhooks/kumomta"),
        ("GET", "/get_config_v1/shaping.toml"),
        ("GET", "/get_suspension_v1/suspended.json"),
        ("GET", "/get_bounce_v1/bounced.json"),
        ("GET", "/subscribe_event_v1"),
    ):
        body = record if method == "POST" else None
        answer = service.call(method, path, body, headers=basic, source="127.0.0.2")
        assert answer.status == 403, (path, answer)
        assert "MTA_HTTP_TRUSTED_CIDRS" in answer.body["error"]["message"]
    answer = service.post("/publish_log_v1", record, source="127.0.0.1")
    assert answer.status == 200
    # SparkPost is governed by its credentials, not by the caller's address.
    assert (
        service.post("/webhooks/sparkpost", b"[]", headers=AUTH, source="127.0.0.2").status == 200
    )
    assert read_topic(settings, "dlq", 0, linger=0.5) == []


def test_kumomta_records_one_per_request_as_an_array_and_as_json_lines(make_settings, serve):
    settings = make_settings()
    service = serve(settings)
    tag = uuid.uuid4().hex[:8]
    records = kumo_records(30, tag)
    singles, array, lines = records[:10], records[10:20], records[20:]
    for record in singles:
        answer = service.post("/publish_log_v1", json.dumps(record).encode())
        assert answer.status == 200 and answer.body["bad"] == [], answer
    answer = service.post("/webhooks/kumomta", json.dumps(array).encode())
    assert answer.status == 200 and answer.body["bad"] == []
    body = b"\n".join(json.dumps(r).encode() for r in lines[:5])
    body += b"\n{not json\n\n" + b"\n".join(json.dumps(r).encode() for r in lines[5:]) + b"\n"
    answer = service.post("/webhooks/kumomta", body)
    assert answer.status == 200 and answer.bad_indexes() == [5]

    events, skipped, bad = expected(settings, records, convert_record, "")
    assert bad == [] and skipped == 0
    assert_arrived(settings, events)
    (dead,) = read_topic(settings, "dlq", 1)
    assert dead.value["value"] == b"{not json" and dead.value["source_offset"] == 5


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_503_with_retry_after_while_the_broker_is_unreachable(make_settings, serve):
    settings = make_settings(bootstrap_servers=f"127.0.0.1:{_closed_port()}", create_topics=False)
    service = serve(settings, args=["--ack-timeout", "2"])
    record = json.dumps(kumo_record("Delivery", 1, "outage")).encode()
    for path, body in (
        ("/publish_log_v1", record),
        ("/webhooks/sparkpost", json.dumps(sparkpost_batch(10, "outage")).encode()),
    ):
        started = time.monotonic()
        answer = service.post(path, body)
        assert answer.status == 503, answer
        assert answer.headers["Retry-After"] == "30"
        assert "broker" in answer.body["error"]["message"]
        assert 1.5 < time.monotonic() - started < 6
    # Nothing to deliver and no records: answered without the broker.
    assert service.post("/webhooks/sparkpost", b'[{"msys":{}}]').status == 200
    health = service.call("GET", "/healthz")
    assert health.status == 200 and health.body == {"status": "ok", "broker": "unreachable"}
    assert service.alive()


def test_healthz_reports_a_reachable_broker(make_settings, serve):
    service = serve(make_settings())
    answer = service.call("GET", "/healthz")
    assert answer.body == {"status": "ok", "broker": "reachable"}


def test_the_service_refuses_to_listen_beyond_loopback_without_credentials():
    env = settings_env(Settings())  # no credential
    env["MTA_HTTP_LISTEN"] = "0.0.0.0:0"
    done = subprocess.run(
        [sys.executable, "-m", "streams.tools.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in done.stderr
    assert "listening on" not in done.stdout


def test_an_address_in_use_is_reported_with_exit_code_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = settings_env(Settings())
        env["MTA_HTTP_LISTEN"] = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "streams.tools.cli", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on {env['MTA_HTTP_LISTEN']}" in done.stderr
    assert "Traceback" not in done.stderr
