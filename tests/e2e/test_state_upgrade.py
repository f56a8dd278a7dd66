"""Upgrade: a worker restores tables whose changelogs hold the JSON values that workers
wrote before the compact encoding, and carries on from them."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Producer
from factories import event

from streams.domain.bounce.qualifier import default_qualifier
from streams.domain.recipient import message_status
from streams.domain.recipient.message_status import ValidityPolicy
from streams.pipeline.feedback import qualify_event
from streams.pipeline.topics import input_key
from streams.runtime.producer import EventProducer
from streams.testing.worker import WorkerProcess
from streams.tools.replay import Replayer, partition_of

from .helpers import collect

pytestmark = [pytest.mark.broker, pytest.mark.e2e]


RELAYED = event("UP1", "relayed", 0)
DEFERRED = event("UP1", "deferred", 60_000, smtp_code=452, diagnostic="452 4.2.2 Mailbox full")
DELIVERED = event("UP1", "delivered", 120_000)


def _old_message_value(partition: int) -> bytes:
    """What the earlier workers wrote for a message with a soft error: JSON, full names."""
    relayed, deferred = RELAYED, DEFERRED
    state = message_status.apply(None, "send", relayed, None, ValidityPolicy())
    q = qualify_event(default_qualifier(), "retry", deferred)
    state = message_status.apply(state, "retry", deferred, q, ValidityPolicy())
    view = message_status.view(state, deferred["event_time"])
    return orjson.dumps(
        {
            "s": state.to_dict(),
            "view": view.to_dict(),
            "v": 2,
            "src": {"send": 0, "retry": 0},
            "p": partition,
            "due": message_status.deadline(state),
        }
    )


def test_a_worker_reads_tables_written_in_the_json_format_and_carries_on(make_settings, tmp_path):
    settings = make_settings()
    # A first worker creates the changelog topics, then stops.
    first = WorkerProcess(settings, tmp_path / "w1.log", views=False).start()
    first.wait_ready()
    first.stop()
    partition = partition_of(input_key("up1@example.org"), settings.partitions)
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(
        f"{settings.app_id}-messages-changelog",
        _old_message_value(partition),
        b'"UP1"',
        partition=partition,
    )
    assert producer.flush(10) == 0
    worker = WorkerProcess(settings, tmp_path / "w2.log", views=False).start()
    try:
        worker.wait_ready()
        with EventProducer(settings) as events:
            events.send("send", DELIVERED)
        latest = collect(
            settings, "status", lambda got: got.get("UP1", {}).get("status") == "sent", "message_id"
        )
        # Version 3: the restored record's version 2, then the delivery; and the same
        # record as replay's of the three events.
        assert latest["UP1"]["version"] == 3
        replayer = Replayer()
        for family, e in (("send", RELAYED), ("retry", DEFERRED), ("send", DELIVERED)):
            [want] = [o.value for o in replayer.apply(family, dict(e)) if o.topic == "status"]
        volatile = ("event_id", "event_time")
        assert {k: v for k, v in latest["UP1"].items() if k not in volatile} == {
            k: v for k, v in want.items() if k not in volatile
        }
    finally:
        worker.stop()
    assert "Traceback" not in worker.log_text(), worker.tail()
