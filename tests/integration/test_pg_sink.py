"""The PostgreSQL sink against the real broker and the real PostgreSQL (a fresh database per
test): rows, version rule, tombstones and retired addresses, dead letters, offsets stored
with the rows and read back on assignment, PostgreSQL going away, and the command's own
steps."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from psycopg.conninfo import make_conninfo

from streams.runtime.codec import Codec
from streams.runtime.config import Settings
from streams.serving.pg_config import PgSettings
from streams.serving.pg_db import connect, migrate, scratch_database
from streams.serving.pg_sink import PgSink
from streams.testing.proxy import TcpProxy
from streams.testing.services import free_port
from streams.tools import cli

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

ADMIN_DSN = PgSettings.from_env().dsn
T0 = 1_767_225_600_000


@pytest.fixture
def dsn() -> Iterator[str]:
    with scratch_database(ADMIN_DSN) as url:
        yield url


def status(
    mid: str, version: int, state: str = "taken_into_account", recipient: str | None = None
) -> dict[str, Any]:
    return {
        "event_id": f"{mid}:{version}",
        "event_time": T0 + version,
        "message_id": mid,
        "delivery_id": "D1",
        "recipient": recipient,
        "status": state,
        "failure_type": None,
        "failure_reason": None,
        "bounce_class": None,
        "rule": None,
        "attempts": version,
        "next_attempt_time": None,
        "version": version,
    }


def address(addr: str, version: int, state: str = "valid") -> dict[str, Any]:
    return {
        "event_id": f"{addr}:{version}",
        "event_time": T0 + version,
        "address": addr,
        "state": state,
        "error_count": version,
        "reason": None,
        "last_error_time": None,
        "version": version,
    }


def kpi(delivery: str, sent: int, version: int) -> dict[str, Any]:
    return {
        "event_id": f"{delivery}:{version}",
        "event_time": T0,
        "delivery_id": delivery,
        "to_deliver": 10,
        "sent": sent,
        "success_pct": sent * 10.0,
        "version": version,
    }


class Out:
    """Produces to the output topics as the workers do (key, Avro value or tombstone)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = Codec.from_settings(settings)
        self.producer = Producer({"bootstrap.servers": settings.bootstrap_servers})

    def send(self, topic: str, key: str, value: dict[str, Any] | None, **headers: int) -> None:
        data = None if value is None else self.codec.encode(topic, value)
        hdrs = [(k, str(v).encode()) for k, v in headers.items()]
        self.producer.produce(self.settings.topic(topic), data, key.encode(), headers=hdrs)

    def raw(self, topic: str, key: str, data: bytes) -> None:
        self.producer.produce(self.settings.topic(topic), data, key.encode())

    def flush(self) -> None:
        self.producer.flush(10)


def drain(settings: Settings, dsn: str, group: str, idle_s: float = 1.0) -> PgSink:
    sink = PgSink(settings, PgSettings(dsn=dsn, group=group))
    sink.migrate()
    sink.run(idle_exit_s=idle_s)
    return sink


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """The records of the dead-letter topic, once some came and then no more (assigned
    partitions: no group to join)."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "dlq-check"})
    topic = settings.topic("dlq")
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)]
    )
    codec = Codec.from_settings(settings)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = [codec.decode("dlq", m.value()) for m in consumer.consume(100, 0.5) if not m.error()]
        found += got
        if found and not got:
            break
    consumer.close()
    return found


def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with connect(dsn) as conn:
        return conn.execute(query).fetchall()


def test_tables_follow_the_topics_exactly_once(make_settings, dsn):
    settings = make_settings()
    out = Out(settings)
    out.send("status", "M1", status("M1", 1, recipient="jane@example.org"))
    out.send("status", "M1", status("M1", 2, "sent"))  # a tick's change: the recipient stays
    out.send("status", "M2", status("M2", 3, "failed"))
    out.send("status", "M2", status("M2", 2))  # lower after higher: ignored
    out.send("status", "M1", None, version=2, event_time=T0 + 2)  # retired: the log stays
    out.send("address", "a@example.org", address("a@example.org", 1))
    out.send("address", "a@example.org", None, version=1, event_time=T0 + 1)
    out.send("address", "b@example.org", address("b@example.org", 2, "quarantined"))
    out.send("address", "b@example.org", None, version=1, event_time=T0)  # older: kept
    out.raw("status", "M3", b'{"not": "avro"}')
    out.send("kpi", "D1", kpi("D1", 4, 1))
    out.send("kpi", "D1", kpi("D1", 7, 2))
    out.flush()
    group = f"g{uuid.uuid4().hex[:8]}"
    first = drain(settings, dsn, group)
    assert (first.written, first.dead_letters) == (12, 1)
    log = "SELECT message_id, status, version FROM mta_delivery_log ORDER BY 1"
    assert rows(dsn, log) == [("M1", "sent", 2), ("M2", "failed", 3)]
    recipients = "SELECT message_id, recipient FROM mta_delivery_log ORDER BY 1"
    assert rows(dsn, recipients) == [("M1", "jane@example.org"), ("M2", None)]
    assert rows(dsn, "SELECT address, state, version FROM mta_address") == [
        ("b@example.org", "quarantined", 2)
    ]
    kpis = "SELECT delivery_id, sent, success_pct, version FROM mta_delivery_indicators"
    assert rows(dsn, kpis) == [("D1", 7, 70.0, 2)]
    stored = rows(dsn, "SELECT sum(next_offset) FROM mta_sink_offsets")
    assert stored == [(12,)]
    letters = dead_letters(settings)
    assert len(letters) == 1
    assert letters[0]["source_topic"] == settings.topic("status")
    assert letters[0]["error_kind"] == "undecodable" and "not Avro" in letters[0]["error"]

    # The group's offsets are committed, but the database's rule: without its stored
    # offsets the status topic is read again, and writing it again changes nothing.
    out.send("status", "M4", status("M4", 1))
    out.flush()
    with connect(dsn) as conn:
        conn.execute("DELETE FROM mta_sink_offsets WHERE topic = %s", (settings.topic("status"),))
        conn.commit()
    again = drain(settings, dsn, group)
    assert again.written == 7
    assert rows(dsn, recipients)[0] == ("M1", "jane@example.org")  # written again: kept
    assert rows(dsn, log) == [
        ("M1", "sent", 2),
        ("M2", "failed", 3),
        ("M4", "taken_into_account", 1),
    ]


def test_a_retired_address_stays_retired_until_reborn(make_settings, dsn):
    """A late record of an address's old life (at or below its tombstone's version) is
    skipped in a later batch and in the same batch; a higher version is its new life."""
    settings = make_settings()
    out = Out(settings)
    for addr in ("a@example.org", "b@example.org"):
        out.send("address", addr, address(addr, 3, "quarantined"))
        out.send("address", addr, None, version=3, event_time=T0 + 3)
    out.send("address", "b@example.org", address("b@example.org", 2))  # late, same batch
    out.flush()
    group = f"g{uuid.uuid4().hex[:8]}"
    drain(settings, dsn, group)
    table = "SELECT address, state, version FROM mta_address ORDER BY 1"
    gone = "SELECT address, version FROM mta_address_gone ORDER BY 1"
    assert rows(dsn, table) == []
    assert rows(dsn, gone) == [("a@example.org", 3), ("b@example.org", 3)]

    out.send("address", "a@example.org", address("a@example.org", 3, "quarantined"))  # late
    out.send("address", "b@example.org", address("b@example.org", 4))  # reborn
    out.flush()
    assert drain(settings, dsn, group).written == 2
    assert rows(dsn, table) == [("b@example.org", "valid", 4)]
    assert rows(dsn, gone) == [("a@example.org", 3)]


def test_postgresql_going_away_is_waited_out(make_settings, dsn, caplog):
    settings = make_settings()
    out = Out(settings)
    port = free_port()
    proxy = TcpProxy(port, 5432).start()
    host_dsn = make_conninfo(dsn, port=str(port))
    sink = PgSink(settings, PgSettings(dsn=host_dsn, group="g", retry_max_s=0.5))
    sink.migrate()
    caplog.set_level(logging.WARNING, "mta_feedback.sink_postgres")
    runner = threading.Thread(target=sink.run)
    runner.start()
    try:
        for chunk in range(3):
            for i in range(200):
                mid = f"M{chunk}-{i}"
                out.send("status", mid, status(mid, 1))
                out.send("status", mid, status(mid, 2, "sent"))
            out.flush()
            if chunk == 0:
                time.sleep(5)  # joined and written
                proxy.outage("refuse")
            elif chunk == 1:
                time.sleep(2)
                proxy.restore()
        deadline = time.monotonic() + 30
        while sink.written < 1200 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        sink.stop()
        runner.join(20)
        proxy.stop()
    assert sink.written == 1200
    assert rows(dsn, "SELECT count(*), min(version) FROM mta_delivery_log") == [(600, 2)]
    assert rows(dsn, "SELECT sum(next_offset) FROM mta_sink_offsets") == [(1200,)]
    text = caplog.text
    assert f"PostgreSQL at 127.0.0.1:{port}/" in text and "is unreachable" in text
    assert "is back after" in text


def test_the_command_migrates_and_purges(dsn, monkeypatch, capsys, caplog):
    monkeypatch.setenv("MTA_POSTGRES_DSN", dsn)
    caplog.set_level(logging.INFO, "mta_feedback.sink_postgres")
    assert cli.main(["sink-postgres", "--migrate"]) == 0
    assert "migrations applied: 0001_tables, 0002_indexes, 0003_address_gone" in caplog.text
    versions = rows(dsn, "SELECT version, name FROM mta_migrations ORDER BY 1")
    assert versions == [(1, "tables"), (2, "indexes"), (3, "address_gone")]
    with connect(dsn) as conn:
        for mid, age_days in (("old", 100), ("new", 1)):
            conn.execute(
                "INSERT INTO mta_delivery_log (message_id, delivery_id, status, last_event_time,"
                " version) VALUES (%s, 'D1', 'sent', now() - make_interval(days => %s), 1)",
                (mid, age_days),
            )
            conn.execute(
                "INSERT INTO mta_address_gone (address, version, deleted_at)"
                " VALUES (%s, 3, now() - make_interval(days => %s))",
                (f"{mid}@example.org", age_days),
            )
        conn.commit()
    capsys.readouterr()
    assert cli.main(["sink-postgres", "--purge-older-than", "90d"]) == 0
    purged = "purged 1 delivery-log rows, 1 remembered address tombstones"
    assert capsys.readouterr().out.strip() == purged
    assert rows(dsn, "SELECT message_id FROM mta_delivery_log") == [("new",)]
    assert rows(dsn, "SELECT address FROM mta_address_gone") == [("new@example.org",)]
    with connect(dsn) as conn:
        assert migrate(conn) == []
    monkeypatch.setenv("MTA_POSTGRES_BATCH_ROWS", "0")
    assert cli.main(["sink-postgres"]) == 2
    assert "MTA_POSTGRES_BATCH_ROWS='0': must be between 1 and" in capsys.readouterr().err
