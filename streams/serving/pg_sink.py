"""The PostgreSQL sink: the status, address and KPI topics → three tables, exactly once.

Each batch of records is one transaction: COPY into temporary staging tables, the address
deletes of its tombstones with the versions they leave remembered (``mta_address_gone``),
one upsert per table guarded by the version rule and those versions
(streams/serving/pg_rows.py), and the next offset of every partition it read, in
``mta_sink_offsets``.
The consumer group's own offsets are never read back: on every partition assignment the
sink seeks to the offsets stored in the database, so a batch is in the tables exactly when
its offsets are, whatever happened to the process.

A record that cannot be decoded or mapped goes to the dead-letter topic with the reason
(flushed before its batch commits: at least once) and the sink goes on. When PostgreSQL
goes away the batch is kept and written again once it answers, after pauses that double up
to ``MTA_POSTGRES_RETRY_MAX_S``, one log line per attempt.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from streams.pipeline.topics import Topic
from streams.runtime.codec import Codec, DecodeError
from streams.runtime.config import Settings
from streams.serving.pg_config import PgSettings
from streams.serving.pg_db import connect, migrate, stored_offsets, where
from streams.serving.pg_rows import COLUMNS, BadRecord, Batch, to_row
from streams.serving.retirement import tombstone

log = logging.getLogger("mta_feedback.sink_postgres")

MAX_POLL_INTERVAL_MS = 10_000
TOPICS = (Topic.STATUS, Topic.ADDRESS, Topic.KPI)
_TABLE = {
    Topic.STATUS: "mta_delivery_log",
    Topic.ADDRESS: "mta_address",
    Topic.KPI: "mta_delivery_indicators",
}
# Staging columns → table columns (epoch ms become timestamptz).
_MS = {
    "next_attempt_ms": "next_attempt_time",
    "last_error_ms": "last_error_time",
    "event_ms": "last_event_time",
}
_STAGE_TYPES = {
    "bounce_class": "integer",
    "attempts": "integer",
    "error_count": "integer",
    "success_pct": "double precision",
}
_TEXT = {"message_id", "delivery_id", "recipient", "status", "failure_type", "failure_reason"}
_TEXT |= {"rule", "address", "state", "reason"}


def _stage_type(column: str) -> str:
    return "text" if column in _TEXT else _STAGE_TYPES.get(column, "bigint")


def _stage(topic: str) -> str:
    return f"mta_stage_{topic}"


def _stage_ddl(topic: str) -> str:
    columns = ", ".join(f"{c} {_stage_type(c)}" for c in COLUMNS[topic])
    return f"CREATE TEMP TABLE IF NOT EXISTS {_stage(topic)} ({columns}) ON COMMIT DELETE ROWS"


def _upsert_sql(topic: str) -> str:
    """INSERT from staging; on conflict replace every column unless the row is newer (a
    null recipient keeps the row's). An address record at or below its address's
    remembered tombstone version is skipped; one that is written drops the entry."""
    staged = COLUMNS[topic]
    target = [_MS.get(c, c) for c in staged]
    values = [f"to_timestamp(s.{c} / 1000.0)" if c in _MS else f"s.{c}" for c in staged]
    updates = ", ".join(
        f"{c} = COALESCE(EXCLUDED.{c}, t.{c})" if c == "recipient" else f"{c} = EXCLUDED.{c}"
        for c in target[1:]
    )
    guard = (
        " WHERE NOT EXISTS (SELECT 1 FROM mta_address_gone g"
        " WHERE g.address = s.address AND s.version <= g.version)"
        if topic == Topic.ADDRESS
        else ""
    )
    upsert = (
        f"INSERT INTO {_TABLE[topic]} AS t ({', '.join(target)})"
        f" SELECT {', '.join(values)} FROM {_stage(topic)} s{guard}"
        f" ON CONFLICT ({target[0]}) DO UPDATE SET {updates}"
        " WHERE t.version <= EXCLUDED.version"
    )
    if topic != Topic.ADDRESS:
        return upsert
    return (
        f"WITH written AS ({upsert} RETURNING t.address)"
        " DELETE FROM mta_address_gone g USING written w WHERE g.address = w.address"
    )


# Per address: the row deleted up to a version (null: any), the remembered entry dropped
# (a tombstone without a version), then raised to a version unless a newer row is left.
_ADDRESS_GONE = "unnest(%s::text[], %s::bigint[], %s::bool[], %s::bigint[])"
_ADDRESS_GONE += " AS d(address, bound, forget, remember)"
_DELETE_ADDRESSES = (
    f"DELETE FROM mta_address t USING {_ADDRESS_GONE}"
    " WHERE t.address = d.address AND (d.bound IS NULL OR t.version <= d.bound)"
)
_FORGET_ADDRESSES = (
    f"DELETE FROM mta_address_gone g USING {_ADDRESS_GONE} WHERE g.address = d.address AND d.forget"
)
_REMEMBER_ADDRESSES = (
    f"INSERT INTO mta_address_gone AS g (address, version) SELECT d.address, d.remember"
    f" FROM {_ADDRESS_GONE} WHERE d.remember IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM mta_address t WHERE t.address = d.address)"
    " ON CONFLICT (address) DO UPDATE"
    " SET version = GREATEST(g.version, EXCLUDED.version), deleted_at = now()"
)
# GREATEST: a sink that lost its partitions in a rebalance never moves an offset back.
_SAVE_OFFSETS = (
    "INSERT INTO mta_sink_offsets AS o (topic, partition, next_offset)"
    " SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[])"
    " ON CONFLICT (topic, partition) DO UPDATE"
    " SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset), updated_at = now()"
)


class Stopped(Exception):
    """Asked to stop while PostgreSQL was unreachable: the batch under way is not written
    (the next start reads it again from the stored offsets)."""


class PgSink:
    """One sink process: a consumer of the three topics and a connection to PostgreSQL."""

    def __init__(
        self,
        settings: Settings,
        pg: PgSettings,
        codec: Codec | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.pg = pg
        self.codec = codec or Codec.from_settings(settings)
        self._sleep = sleep
        self._logical = {settings.topic(t): t for t in TOPICS}
        self._conn: psycopg.Connection | None = None
        self._producer: Producer | None = None
        self._stopping = False
        self.assigned = False  # partitions assigned once at least
        self._assigned_at = 0.0  # monotonic time of the last assignment
        self.written = 0  # records whose batch committed
        self.dead_letters = 0
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": pg.group_id(settings.app_id),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": int(settings.session_timeout_s * 1000),
                "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000),
                # Also the rebalance timeout: a restarted sink waits this long at most for
                # a SIGKILLed predecessor's membership to end. A write that waits longer for
                # PostgreSQL leaves the group, and rejoining seeks to the stored offsets.
                "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
                **settings.kafka_client_config(),
            }
        )

    # --- PostgreSQL, waited out when it is away -----------------------------------------

    def _with_db(self, what: str, action: Callable[[psycopg.Connection], Any]) -> Any:
        """``action`` on a live connection; while PostgreSQL is unreachable, reconnect and
        try again after doubling pauses (the action must be safe to repeat)."""
        pause, down_since = 0.5, None
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.pg.dsn)
                    for topic in TOPICS:
                        self._conn.execute(_stage_ddl(topic))
                    self._conn.commit()
                result = action(self._conn)
                if down_since is not None:
                    log.warning(
                        "PostgreSQL at %s is back after %.1f s; %s done",
                        where(self.pg.dsn),
                        time.monotonic() - down_since,
                        what,
                    )
                return result
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self._stopping:
                    raise Stopped from exc
                down_since = down_since or time.monotonic()
                log.warning(
                    "PostgreSQL at %s is unreachable (%s); %s retried in %.1f s",
                    where(self.pg.dsn),
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    what,
                    pause,
                )
                self._drop_connection()
                self._sleep(pause)
                pause = min(pause * 2, self.pg.retry_max_s)
                if self._stopping:
                    raise Stopped from exc

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: nothing to close
                self._conn.close()
        self._conn = None

    def migrate(self) -> list[str]:
        applied = self._with_db("migration", migrate)
        return [f"{m.version:04d}_{m.name}" for m in applied]

    # --- Kafka ---------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Seek every assigned partition to the offset stored with the rows."""
        keys = [(tp.topic, tp.partition) for tp in partitions]
        stored = self._with_db("reading stored offsets", lambda c: stored_offsets(c, keys))
        for tp in partitions:
            tp.offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.assign(partitions)
        self.assigned, self._assigned_at = True, time.monotonic()
        log.info("assigned %d partitions, %d with stored offsets", len(partitions), len(stored))

    def stop(self) -> None:
        self._stopping = True

    def run(self, idle_exit_s: float | None = None) -> None:
        """Consume and write until ``stop()`` (or no record for ``idle_exit_s`` since
        partitions were last assigned)."""
        self._consumer.subscribe(list(self._logical), on_assign=self._on_assign)
        idle_since = time.monotonic()
        try:
            while not self._stopping:
                msgs = self._consumer.consume(self.pg.batch_rows, self.pg.batch_wait_ms / 1000)
                batches = [b for b in self.batches(msgs) if b.records]
                if batches or not self.assigned:
                    for batch in batches:
                        self.write(batch)
                    idle_since = time.monotonic()
                # Idle from the last assignment at the earliest: the fetches after its seeks
                # take a while.
                elif (
                    idle_exit_s is not None
                    and time.monotonic() - max(idle_since, self._assigned_at) > idle_exit_s
                ):
                    return
        except Stopped:
            log.warning("stopped while PostgreSQL was unreachable: the last batch is read again")
        finally:
            self.close()

    def batches(self, msgs: Iterable[Any]) -> list[Batch]:
        """Kafka messages → folded batches (one but where ``Batch.splits_at`` says); bad
        records become dead letters."""
        batch = Batch()
        done = [batch]
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise RuntimeError(f"consumer error: {err}")
                if err.code() != KafkaError._PARTITION_EOF:
                    # Transient (the client retries), or the group left after a long wait
                    # for PostgreSQL: the next poll rejoins and seeks to the stored offsets.
                    log.warning("consumer: %s", err.str())
                continue
            topic = self._logical[msg.topic()]
            value = msg.value()
            gone = tombstone(msg.key(), msg.headers()) if value is None else None
            if gone is not None and batch.splits_at(topic, gone.key, gone.version):
                batch = Batch()
                done.append(batch)
            batch.seen(msg.topic(), msg.partition(), msg.offset())
            if value is None:
                if gone is not None:
                    batch.tombstone(topic, gone.key, gone.version)
                continue
            try:
                batch.upsert(topic, to_row(topic, self.codec.decode(topic, value)))
            except DecodeError as exc:
                self._dead_letter(msg, exc.kind, exc.reason)
            except BadRecord as exc:
                self._dead_letter(msg, "invalid", str(exc))
            except (ValueError, TypeError, KeyError) as exc:
                self._dead_letter(msg, "undecodable", f"{type(exc).__name__}: {exc}")
        return done

    def _dead_letter(self, msg: Any, kind: str, reason: str) -> None:
        self.dead_letters += 1
        log.warning(
            "dead letter from %s[%s]@%s: %s: %s",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            kind,
            reason,
        )
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self.settings.bootstrap_servers,
                    **self.settings.kafka_client_config(),
                }
            )
        record = {
            "event_time": int(time.time() * 1000),
            "source_topic": msg.topic(),
            "source_partition": msg.partition(),
            "source_offset": msg.offset(),
            "key": msg.key(),
            "value": msg.value(),
            "error": reason[:1000],
            "error_kind": kind,
        }
        dlq = self.settings.topic(Topic.DLQ)
        self._producer.produce(dlq, self.codec.encode(Topic.DLQ, record, dlq), msg.key())

    def write(self, batch: Batch) -> None:
        """One transaction: rows, address deletes and offsets (repeated whole if
        PostgreSQL went away before it committed)."""
        if self._producer is not None and self._producer.flush(30) > 0:
            raise RuntimeError("dead letters not delivered within 30 s")
        self._with_db(f"a batch of {batch.records} records", lambda c: _write(c, batch))
        self.written += batch.records
        # For lag monitoring only: a restart reads the database's offsets, not these.
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()],
                asynchronous=True,
            )
        except KafkaException as exc:  # out of the group for now: the next batch commits
            log.debug("group offsets not committed: %s", exc)

    def close(self) -> None:
        self._stopping = True
        self._consumer.close()
        if self._producer is not None:
            self._producer.flush(10)
        self._drop_connection()


def _write(conn: psycopg.Connection, batch: Batch) -> None:
    with conn.transaction(), conn.cursor() as cur:
        gone = batch.address_deletes()
        if gone:
            arrays = (
                [k for k, _ in gone],
                [g.bound for _, g in gone],
                [g.forget for _, g in gone],
                [g.remember for _, g in gone],
            )
            for statement in (_DELETE_ADDRESSES, _FORGET_ADDRESSES, _REMEMBER_ADDRESSES):
                cur.execute(statement, arrays)
        for topic in TOPICS:
            rows = batch.upserts(topic)
            if not rows:
                continue
            columns = ", ".join(COLUMNS[topic])
            with cur.copy(f"COPY {_stage(topic)} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(_upsert_sql(topic).encode())
        offsets = list(batch.offsets.items())
        cur.execute(
            _SAVE_OFFSETS,
            ([t for (t, _), _ in offsets], [p for (_, p), _ in offsets], [o for _, o in offsets]),
        )
