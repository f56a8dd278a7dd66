"""The PostgreSQL sink draining a backlog of status records, beside a plain COPY.

    python benchmarks/pg_sink.py --records 200000

Produces ``--records`` status records (one per message, encoded with the project's codec)
to fresh topics on the shared broker, then, in a fresh database on ``MTA_POSTGRES_DSN``'s
server (default fsync):

- baseline: one consumer reads the topic, decodes each record and COPYs the rows, a
  transaction per batch, into an empty table with the same primary key;
- sink: ``PgSink`` (streams/serving/pg_sink.py) from partition assignment to the last
  commit: staging COPY, upsert under the version rule, offsets, a transaction per batch.

``--rounds`` alternate runs of each (default 2; each starts from empty tables), the best
of each kept: the machine is shared and its load moves within a run. One JSON line each
(with every round's figure), then the ratio of the two best rates (target at least 0.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.runtime.codec import Codec
from streams.runtime.config import Settings
from streams.serving.pg_config import PgSettings
from streams.serving.pg_db import connect, scratch_database
from streams.serving.pg_rows import STATUS_COLUMNS, to_row
from streams.serving.pg_sink import PgSink, _stage_type
from streams.tools.stack import Stack

START_MS = 1_767_225_600_000


def produce(settings: Settings, codec: Codec, records: int) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 50})
    topic = settings.topic("status")
    for i in range(records):
        mid = f"D1-M{i:08d}"
        value = {
            "event_id": f"{mid}:1",
            "event_time": START_MS + i,
            "message_id": mid,
            "delivery_id": "D1",
            "status": "failed" if i % 20 == 0 else "sent",
            "failure_type": "hard" if i % 20 == 0 else None,
            "failure_reason": "User unknown" if i % 20 == 0 else None,
            "bounce_class": 10 if i % 20 == 0 else None,
            "rule": "user_unknown" if i % 20 == 0 else None,
            "attempts": 1,
            "next_attempt_time": None,
            "version": 1,
        }
        producer.produce(topic, codec.encode("status", value), mid.encode())
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)


def baseline(settings: Settings, dsn: str, codec: Codec, records: int, batch: int) -> float:
    """Seconds for consume + decode + COPY of every record into an empty keyed table."""
    columns = ", ".join(f"{c} {_stage_type(c)}" for c in STATUS_COLUMNS)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    topic = settings.topic("status")
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)]
    )
    done = 0
    with connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS plain_copy")
        conn.execute(f"CREATE TABLE plain_copy ({columns}, PRIMARY KEY (message_id))")
        conn.commit()
        start = time.perf_counter()
        while done < records:
            msgs = consumer.consume(batch, 0.2)
            rows = [to_row("status", codec.decode("status", m.value())) for m in msgs]
            if not rows:
                continue
            copy = f"COPY plain_copy ({', '.join(STATUS_COLUMNS)}) FROM STDIN"
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as cp:
                for row in rows:
                    cp.write_row(row)
            done += len(rows)
        elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed


class TimedSink(PgSink):
    """The sink, noting when its partitions came and when its last batch committed."""

    started = 0.0
    finished = 0.0

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, partitions)
        self.started = time.perf_counter()

    def write(self, batch: Any) -> None:
        super().write(batch)
        self.finished = time.perf_counter()


def sink(settings: Settings, dsn: str, records: int, batch: int) -> float:
    """Seconds from the sink's partition assignment to its last commit, empty tables."""
    with connect(dsn) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS mta_delivery_log, mta_address,"
            " mta_delivery_indicators, mta_sink_offsets, mta_migrations"
        )
        conn.commit()
    pg = PgSettings(dsn=dsn, group=f"bench-{uuid.uuid4().hex[:8]}", batch_rows=batch)
    timed = TimedSink(settings, pg)
    timed.migrate()
    timed.run(idle_exit_s=2.0)
    assert timed.written == records, f"the sink wrote {timed.written} of {records}"
    with connect(dsn) as conn:
        count = conn.execute("SELECT count(*) FROM mta_delivery_log").fetchone()
    assert count is not None and count[0] == records
    return timed.finished - timed.started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=PgSettings.batch_rows)
    parser.add_argument("--rounds", type=int, default=2, help="alternate runs of each (best)")
    args = parser.parse_args()
    base = Settings.from_env()
    settings = dataclasses.replace(base, topic_prefix=f"bench{uuid.uuid4().hex[:8]}")
    Stack(settings).create_topics()
    codec = Codec.from_settings(settings)
    produce(settings, codec, args.records)
    plain_s: list[float] = []
    sink_s: list[float] = []
    # Alternated, best of each: the machine is shared, and its load moves within a run.
    with scratch_database(PgSettings.from_env().dsn, "mta_bench") as dsn:
        for _ in range(args.rounds):
            plain_s.append(baseline(settings, dsn, codec, args.records, args.batch))
            sink_s.append(sink(settings, dsn, args.records, args.batch))
    common = {"records": args.records, "batch": args.batch}
    plain, rate = args.records / min(plain_s), args.records / min(sink_s)
    rounds = lambda runs: [round(args.records / s) for s in runs]  # noqa: E731
    print(
        json.dumps(
            {"what": "plain_copy", **common, "rows_per_s": round(plain), "rounds": rounds(plain_s)}
        )
    )
    print(
        json.dumps(
            {"what": "pg_sink", **common, "rows_per_s": round(rate), "rounds": rounds(sink_s)}
        )
    )
    print(json.dumps({"what": "ratio", "pg_sink_over_plain_copy": round(rate / plain, 3)}))


if __name__ == "__main__":
    main()
