"""The operator API over real sockets: a ``mta-feedback serve`` subprocess reading views
written to the real Redis as the view updater writes them, and producing operator events
to the embedded broker."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from urllib.parse import quote

import pytest
from openapi_spec_validator import validate

from streams.pipeline.topics import Topic
from streams.runtime.config import Settings
from streams.serving.views import ViewStore
from streams.testing.services import free_port
from streams.testing.worker import WorkerProcess

from .service import ServiceProcess, read_topic

pytestmark = [pytest.mark.broker, pytest.mark.redis]

TOKEN = "op-token-123"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_767_225_600_000


@pytest.fixture
def api(make_settings, tmp_path):
    """(settings, views, service): a service with a token, logging at debug level (so its
    access log is on), and the views of its prefix, removed afterwards."""
    settings = make_settings()
    store = ViewStore.from_settings(settings)
    env = {"MTA_HTTP_TOKEN": TOKEN, "MTA_LOG_LEVEL": "debug"}
    service = ServiceProcess(settings, tmp_path / "serve.log", env).start()
    yield settings, store, service
    assert service.stop() == 0, service.log_text()
    assert "Traceback" not in service.log_text(), service.log_text()
    for key in store.client.scan_iter(match=f"{settings.topic_prefix}:*"):
        store.client.delete(key)


def address_record(address: str, state: str, version: int = 1, **extra) -> dict:
    return {
        "event_id": f"{address}-{version}",
        "event_time": NOW + version,
        "address": address,
        "state": state,
        "error_count": 3 if state == "quarantined" else 0,
        "reason": "User unknown" if state != "valid" else None,
        "last_error_time": NOW if state != "valid" else None,
        "version": version,
        **extra,
    }


def get(service: ServiceProcess, path: str, **kwargs):
    return service.call("GET", path, **kwargs)


def test_each_read_route_answers_the_record_of_its_view(api):
    _, store, service = api
    store.write(
        Topic.STATUS,
        [
            {
                "event_id": "00123-3",
                "event_time": NOW,
                "message_id": "00123",  # digits: must stay a string
                "delivery_id": "D7",
                "status": "taken_into_account",
                "failure_type": "soft",
                "failure_reason": "Mailbox full",
                "bounce_class": 24,
                "rule": "mailbox-full",
                "attempts": 2,
                "next_attempt_time": NOW + 600_000,
                "version": 3,
            }
        ],
    )
    store.write(Topic.ADDRESS, [address_record("jane@example.com", "quarantined")])
    kpi = {"to_deliver": 10, "taken_into_account": 2, "sent": 7, "failed": 1}
    kpi |= {"failed_hard": 1, "failed_soft": 0, "pending": 2, "bounces_errors": 3}
    store.write(
        Topic.KPI,
        [{"event_id": "D7-4", "event_time": NOW, "delivery_id": "D7", **kpi,
          "success_pct": 70.0, "version": 4}],
    )  # fmt: skip
    throttles = [
        {"event_id": f"{key}-1", "event_time": NOW, "key": key, "scope": scope, "mode": mode,
         "max_rate_per_hour": 3600, "max_connections": 4, "max_messages_per_connection": 50,
         "retry_interval_s": 900, "suspended_until": None, "reason": "baseline", "version": 1}
        for key, scope, mode in (("yahoo", "group", "backoff"), ("192.0.2.1|gmail", "ip_group",
                                                                 "normal"))
    ]  # fmt: skip
    store.write(Topic.THROTTLE, throttles)
    window = {"attempts": 100, "delivered": 90, "hard": 1, "soft": 2, "blocks": 3}
    window |= {"rate_limited": 4, "complaints": 0, "score": 88.5}
    store.write(
        Topic.REPUTATION,
        [{"event_id": "r1", "event_time": NOW, "key": "gmail.com", "scope": "domain",
          "window_start": NOW - 3_600_000, "window_end": NOW, **window}],
    )  # fmt: skip

    message = get(service, "/v1/messages/00123")
    assert message.status == 200, message
    assert message.body["message_id"] == "00123" and message.body["delivery_id"] == "D7"
    assert message.body["status"] == "taken_into_account"
    assert (message.body["failure_type"], message.body["failure_reason"]) == (
        "soft",
        "Mailbox full",
    )
    assert message.body["rule"] == "mailbox-full" and message.body["attempts"] == 2
    assert message.body["next_attempt_time"] == NOW + 600_000

    address = get(service, "/v1/addresses/Jane@Example.com")
    assert address.status == 200, address
    assert address.body["state"] == "quarantined" and address.body["error_count"] == 3

    delivery = get(service, "/v1/deliveries/D7")
    assert delivery.status == 200 and delivery.body["success_pct"] == 70.0
    assert delivery.body["sent"] == 7

    listed = get(service, "/v1/throttle")
    assert listed.status == 200
    assert [t["key"] for t in listed.body["items"]] == ["192.0.2.1|gmail", "yahoo"]
    one = get(service, "/v1/throttle/" + quote("192.0.2.1|gmail", safe=""))
    assert one.status == 200 and one.body["mode"] == "normal", one
    assert one.body["suspended_until"] is None or "suspended_until" not in one.body

    reputation = get(service, "/v1/reputation/gmail.com")
    assert reputation.status == 200 and reputation.body["score"] == 88.5

    for path in (
        "/v1/messages/nope",
        "/v1/addresses/nobody@example.com",
        "/v1/deliveries/D8",
        "/v1/throttle/nope",
        "/v1/reputation/nope.example",
    ):
        answer = get(service, path)
        assert answer.status == 404, path
        assert answer.body["error"]["code"] == "not_found", answer
        assert set(answer.body["error"]) == {"code", "message"}
    # No such route, and a route with the wrong method, answer in the same shape.
    unknown = get(service, "/v1/no-such-route")
    assert unknown.status == 404 and unknown.body["error"]["code"] == "not_found"
    wrong = service.call("DELETE", "/v1/throttle")
    assert wrong.status == 405 and wrong.body["error"]["code"] == "method_not_allowed"


def test_quarantine_pages_are_stable_with_no_duplicate_and_no_gap(api):
    _, store, service = api
    states = ("quarantined", "denylisted", "valid")
    records = [address_record(f"u{i:03d}@a.example", states[i % 3]) for i in range(250)]
    records += [address_record(f"u{i:03d}@b.example", "quarantined") for i in range(40)]
    records += [address_record(f"u{i:03d}@a.example.org", "quarantined") for i in range(5)]
    store.write(Topic.ADDRESS, records)
    listed = {r["address"] for r in records if r["state"] != "valid"
              and r["address"].endswith("@a.example")}  # fmt: skip
    assert len(listed) == 167

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        path = "/v1/quarantine?domain=A.example&limit=60" + (
            f"&cursor={quote(cursor)}" if cursor else ""
        )
        answer = get(service, path)
        assert answer.status == 200, answer
        seen += [r["address"] for r in answer.body["items"]]
        assert all(r["state"] in ("quarantined", "denylisted") for r in answer.body["items"])
        pages += 1
        if pages == 1:
            # Added between pages: after the cursor it is seen, before it it is not.
            late = [address_record("zzz@a.example", "denylisted"),
                    address_record("aaa@a.example", "quarantined")]  # fmt: skip
            store.write(Topic.ADDRESS, late)
            listed.add("zzz@a.example")
        cursor = answer.body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) and set(seen) == listed
    assert seen == sorted(seen)

    only = get(service, "/v1/quarantine?state=denylisted&domain=b.example")
    assert only.status == 200 and only.body == {"items": [], "next_cursor": None}
    everything = get(service, "/v1/quarantine?limit=1000").body
    domains = [r["address"].partition("@")[2] for r in everything["items"]]
    assert domains == sorted(domains) and everything["next_cursor"] is None
    assert len(everything["items"]) == 167 + 2 + 40 + 5  # with aaa@ and zzz@

    for bad in ("limit=0", "limit=1001", "limit=x", "state=valid", "domain=a@b", "cursor="):
        answer = get(service, f"/v1/quarantine?{bad}")
        assert answer.status == 400, bad
        assert answer.body["error"]["code"] == "bad_parameter"


def test_quarantine_csv_export_has_named_columns_and_every_row(api):
    _, store, service = api
    records = [address_record(f"c{i:04d}@csv.example", "quarantined", reason=f"r, \"{i}\"")
               for i in range(1500)]  # fmt: skip
    records.append(address_record("d@csv.example", "denylisted"))
    store.write(Topic.ADDRESS, records)
    answer = get(service, "/v1/quarantine.csv?domain=csv.example")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.body.decode())))
    assert list(rows[0]) == [
        "address", "state", "reason", "error_count", "last_error_time", "updated_time"
    ]  # fmt: skip
    assert len(rows) == 1501
    first = rows[0]
    assert first["address"] == "c0000@csv.example" and first["reason"] == 'r, "0"'
    assert first["error_count"] == "3" and first["last_error_time"] == str(NOW)
    assert first["updated_time"] == str(NOW + 1)
    assert rows[-1]["address"] == "d@csv.example" and rows[-1]["state"] == "denylisted"


def test_view_store_unreachable_is_503_and_distinct_from_not_found(make_settings, tmp_path):
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    service = ServiceProcess(settings, tmp_path / "serve.log").start()
    try:
        for path in ("/v1/messages/m1", "/v1/quarantine", "/v1/quarantine.csv", "/v1/throttle"):
            answer = get(service, path)
            assert answer.status == 503, (path, answer)
            assert answer.headers["Retry-After"] == "5"
            assert answer.body["error"]["code"] == "view_store_unavailable"
        lift = service.post("/v1/addresses/a@b.example/lift", b"{}", headers={"X-Actor": "ops"})
        assert lift.status == 503  # a lift checks the view first
    finally:
        assert service.stop() == 0


def _operator_events(settings: Settings, expected: int) -> list:
    return read_topic(settings, Topic.OPERATOR, expected, linger=1.0)


def test_actions_produce_operator_events_answered_202(api):
    settings, store, service = api
    store.write(Topic.ADDRESS, [address_record("held@example.com", "quarantined")])
    sent = []
    for kind, body, headers in (
        ("lift", {"reason": "mailbox fixed"}, {"X-Actor": "alice"}),
        ("denylist", {"actor": "bob"}, {}),
        ("undenylist", None, {"X-Actor": "carol"}),
    ):
        raw = b"" if body is None else json.dumps(body).encode()
        before = int(time.time() * 1000)
        answer = service.post(
            f"/v1/addresses/Held@Example.com/{kind}", raw, headers={**BEARER, **headers}
        )
        assert answer.status == 202, answer
        assert answer.body["status"] == "accepted"
        uuid.UUID(answer.body["event_id"])
        sent.append((kind, answer.body["event_id"], before))
    events = _operator_events(settings, 3)
    assert [r.value["event_id"] for r in events] == [s[1] for s in sent]
    for record, (kind, _, before) in zip(events, sent, strict=True):
        assert record.key == b"held@example.com"
        assert record.value["recipient"] == "Held@Example.com"
        assert record.value["kind"] == kind
        assert before <= record.value["event_time"] <= int(time.time() * 1000)
    assert [r.value["actor"] for r in events] == ["alice", "bob", "carol"]
    assert [r.value["reason"] for r in events] == ["mailbox fixed", None, None]


def test_actions_refused(api):
    settings, store, service = api
    store.write(Topic.ADDRESS, [address_record("spam@example.com", "denylisted")])
    path = "/v1/addresses/spam@example.com/lift"
    assert service.post(path, b"{}", headers={"X-Actor": "a"}).status == 401
    wrong = {"Authorization": "Bearer nope", "X-Actor": "a"}
    assert service.post(path, b"{}", headers=wrong).status == 401
    conflict = service.post(path, b"{}", headers={**BEARER, "X-Actor": "a"})
    assert conflict.status == 409 and conflict.body["error"]["code"] == "denylisted"
    for body, headers, code in (
        (b"{}", {}, "actor_required"),
        (b'{"actor": "  "}', {}, "actor_required"),
        (b"not json", {"X-Actor": "a"}, "bad_request"),
        (b'{"reason": 5}', {"X-Actor": "a"}, "bad_request"),
        (b'{"why": "x"}', {"X-Actor": "a"}, "bad_request"),
        (b'{"actor": "b"}', {"X-Actor": "a"}, "bad_request"),
    ):
        answer = service.post(
            "/v1/addresses/spam@example.com/undenylist", body, headers={**BEARER, **headers}
        )
        assert answer.status == 400, (body, answer)
        assert answer.body["error"]["code"] == code
    invalid = service.post("/v1/addresses/not-an-address/denylist", b"{}",
                           headers={**BEARER, "X-Actor": "a"})  # fmt: skip
    assert invalid.status == 400 and "recipient" in invalid.body["error"]["message"]
    assert _operator_events(settings, 0) == []


def test_dead_letters_since_a_time(api):
    _, _, service = api
    before = int(time.time() * 1000)
    bad = 0
    for body in (b"<not json>", b"[1, 2]"):
        ingested = service.post("/webhooks/kumomta", body)
        assert ingested.status == 200
        bad += len(ingested.body["bad"])
    assert bad >= 2
    started = time.monotonic()
    answer = get(service, f"/v1/dlq?since={before}")
    assert answer.status == 200, answer
    assert time.monotonic() - started < 4  # it stops at the end, not at its time limit
    letters = answer.body["items"]
    assert len(letters) == bad
    assert all(letter["error"] and letter["source_topic"] == "http:/webhooks/kumomta"
               for letter in letters)  # fmt: skip
    assert letters[0]["value"] == "<10 bytes>", letters
    assert get(service, "/v1/dlq?limit=2").body["items"] == letters[:2]
    later = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600))
    assert get(service, f"/v1/dlq?since={later}").body["items"] == []
    assert get(service, "/v1/dlq?since=yesterday").status == 400


def test_openapi_document_is_valid_and_lists_every_route(api):
    _, _, service = api
    answer = get(service, "/openapi.json")
    assert answer.status == 200
    validate(answer.body)
    operations = {(m.upper(), p) for p, ops in answer.body["paths"].items() for m in ops}
    assert ("GET", "/v1/messages/{message_id}") in operations
    assert ("POST", "/v1/addresses/{address}/undenylist") in operations


def test_the_log_names_routes_never_addresses(api):
    _, store, service = api
    secret = f"secret-{uuid.uuid4().hex[:8]}@hidden.example"
    store.write(Topic.ADDRESS, [address_record(secret, "quarantined")])
    assert get(service, f"/v1/addresses/{secret}").status == 200
    assert get(service, f"/v1/quarantine?cursor={secret}").status == 200
    assert service.post(f"/v1/addresses/{secret}/lift", b"{}",
                        headers={**BEARER, "X-Actor": "a"}).status == 202  # fmt: skip
    assert service.post(f"/v1/addresses/{secret}/denylist", b"{}").status == 401
    time.sleep(0.5)
    text = service.log_text()
    assert "/v1/addresses/{address}/lift 202" in text, text
    assert "/v1/addresses/{address} 200" in text
    assert secret.partition("@")[0] not in text  # at any level: the service logs at debug


def _state_becomes(service: ServiceProcess, address: str, state: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        answer = get(service, f"/v1/addresses/{address}")
        if answer.status == 200 and answer.body["state"] == state:
            return answer.body
        assert time.monotonic() < deadline, answer
        time.sleep(0.3)


@pytest.mark.e2e
def test_actions_through_a_worker_change_what_the_api_reads(api, tmp_path):
    settings, _, service = api
    address = f"e2e-{uuid.uuid4().hex[:6]}@complained.example"
    acting = {**BEARER, "X-Actor": "alice"}
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        denied = service.post(f"/v1/addresses/{address}/denylist", b'{"reason": "abuse"}',
                              headers=acting)  # fmt: skip
        assert denied.status == 202, denied
        record = _state_becomes(service, address, "denylisted")
        assert record["reason"] == "abuse"
        listed = get(service, "/v1/quarantine?state=denylisted&domain=complained.example")
        assert [r["address"] for r in listed.body["items"]] == [address]
        lift = service.post(f"/v1/addresses/{address}/lift", b"", headers=acting)
        assert lift.status == 409
        undo = service.post(f"/v1/addresses/{address}/undenylist", b"", headers=acting)
        assert undo.status == 202
        assert _state_becomes(service, address, "valid")["reason"] == "Undenylisted by operator"
        empty = get(service, "/v1/quarantine?domain=complained.example")
        assert empty.body == {"items": [], "next_cursor": None}
    finally:
        worker.stop()
