"""End to end: worker subprocess + real broker + producer + consumer of the outputs."""

from __future__ import annotations

import io

import fastavro
import pytest
from factories import event

from streams.runtime.codec import Codec
from streams.runtime.producer import EventProducer
from streams.testing.worker import WorkerProcess

from .helpers import collect, collect_all

pytestmark = [pytest.mark.broker, pytest.mark.e2e]


@pytest.fixture
def running(make_settings, tmp_path):
    settings = make_settings()
    worker = WorkerProcess(settings, tmp_path / "worker.log", views=False).start()
    try:
        worker.wait_ready()
        yield settings, worker
    finally:
        worker.stop()


def test_relayed_is_taken_into_account_and_delivered_is_sent(running):
    settings, worker = running
    with EventProducer(settings) as producer:
        producer.send("send", event("M1", "relayed", 0))
        producer.send("send", event("M2", "relayed", 0))
        producer.send("send", event("M2", "delivered", 5000))
    latest = collect(
        settings,
        "status",
        lambda got: got.get("M2", {}).get("status") == "sent" and "M1" in got,
        "message_id",
    )
    assert latest["M1"]["status"] == "taken_into_account"
    assert latest["M2"]["status"] == "sent"
    assert latest["M2"]["version"] == 2  # taken_into_account, then sent
    assert worker.alive()


def test_bad_records_are_dead_lettered_and_the_rest_goes_through(running):
    settings, worker = running
    codec = Codec()
    good = codec.encode("send", event("G1", "relayed", 0))
    truncated = good[:-4]
    unknown_fp = b"\xc3\x01" + b"\x42" * 8 + good[10:]
    bounce_on_send = codec.encode("bounce", event("B1", "sync", 0, smtp_code=550))
    bad_address = codec.encode("send", event("B2", "relayed", 0, recipient="not-an-address"))
    far_future = codec.encode("send", event("B3", "relayed", 10**13))
    huge_text = codec.encode("bounce", event("B4", "sync", 0, diagnostic="x" * 100_000))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema({"type": "string"}), "hello")
    with EventProducer(settings) as producer:
        send, bounce = settings.topic("send"), settings.topic("bounce")
        producer.produce_raw(send, b"k", b"\xff\x00 garbage")
        producer.produce_raw(send, b"k", truncated)
        producer.produce_raw(send, b"k", unknown_fp)
        producer.send("send", event("G1", "relayed", 0))
        producer.produce_raw(send, b"k", bounce_on_send)
        producer.produce_raw(send, b"k", bad_address)
        producer.produce_raw(send, b"k", far_future)
        producer.produce_raw(bounce, b"k", huge_text)
        producer.produce_raw(send, None, b"")
        producer.send("send", event("G2", "relayed", 0))
        producer.send("send", event("G2", "delivered", 10))
    dead = collect_all(settings, "dlq", 8)
    kinds = sorted(r.value["error_kind"] for r in dead)
    assert kinds == sorted(
        [
            "undecodable",
            "invalid",
            "unknown_schema",
            "wrong_schema",
            "invalid",
            "invalid",
            "invalid",
            "undecodable",
        ]
    )
    reasons = " | ".join(r.value["error"] for r in dead)
    for words in (
        "magic byte",
        "fingerprint",
        "BounceEvent",
        "local@domain",
        "future",
        "diagnostic",
    ):
        assert words in reasons
    assert all(
        r.value["source_topic"] in (settings.topic("send"), settings.topic("bounce")) for r in dead
    )
    assert {r.value["value"] for r in dead} >= {truncated, unknown_fp, huge_text}
    latest = collect(
        settings, "status", lambda got: got.get("G2", {}).get("status") == "sent", "message_id"
    )
    assert latest["G1"]["status"] == "taken_into_account"
    assert latest["G2"]["status"] == "sent"
    assert worker.alive()
    assert "Traceback" not in worker.log_text()
