"""``mta-feedback sink-postgres`` SIGKILLed three times while a worker's outputs pour in,
and the PostgreSQL server restarted once (where this machine runs it as a Debian cluster,
as CI does; elsewhere the sink's connections are cut, which is what it sees of a restart):
the delivery log, address table and delivery indicators then equal ``replay``'s final
state for the same input, row for row, each delivery-log row with its input's recipient.
Nothing lost (offsets are stored with the rows), nothing doubled (a batch is in the
tables exactly when its offsets are).

Each sink after a SIGKILL joins under a group of its own: its predecessor's membership
would hold the group for a session timeout, and the sink never reads a group's offsets
anyway (it seeks to those stored in the database), which this also shows.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from streams.runtime.config import Settings
from streams.serving.pg_config import PgSettings
from streams.serving.pg_db import connect, scratch_database, terminate_backends
from streams.testing.sample import Event, SampleCampaign
from streams.testing.worker import WorkerProcess, settings_env

from .helpers import produce_paced
from .reference import ADDRESS_FIELDS, KPI_FIELDS, MESSAGE_FIELDS, diff, reference

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.postgres]

ADMIN_DSN = PgSettings.from_env().dsn
KILLS = 3
PRODUCE_S = 12.0


def restart_server(dsn: str) -> None:
    """Restart the Debian cluster that serves port 5432; without one, cut the sink's
    connections to ``dsn`` instead."""
    lister = shutil.which("pg_lsclusters")
    listed = subprocess.run([lister, "-h"], capture_output=True, text=True) if lister else None
    for line in listed.stdout.splitlines() if listed else []:
        version, name, port, status = line.split()[:4]
        if port == "5432" and status == "online":
            subprocess.run(["pg_ctlcluster", version, name, "restart"], check=True, timeout=120)
            return
    assert terminate_backends(ADMIN_DSN, dsn) >= 1


class Sink:
    """One ``sink-postgres`` child process with its log."""

    def __init__(self, settings: Settings, dsn: str, log: Path) -> None:
        env = settings_env(settings)
        env.update(
            MTA_POSTGRES_DSN=dsn,
            MTA_POSTGRES_GROUP=f"sink-{uuid.uuid4().hex[:8]}",
            # Small transactions: many of them in flight while the kills land.
            MTA_POSTGRES_BATCH_ROWS="100",
            MTA_POSTGRES_RETRY_MAX_S="1",
        )
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.tools.cli", "sink-postgres"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def written(dsn: str) -> int:
    """Records the sink has committed (the offsets stored with the rows)."""
    try:
        with connect(dsn) as conn:
            query = "SELECT coalesce(sum(next_offset), 0) FROM mta_sink_offsets"
            row = conn.execute(query).fetchone()
    except psycopg.errors.UndefinedTable:  # not migrated yet
        return 0
    return int(row[0]) if row else 0


def wait_for_progress(dsn: str, before: int, log: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while written(dsn) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    now = written(dsn)
    assert now > before, log.read_text()[-2000:]
    return now


def wait_for_log(log: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert text in log.read_text(), log.read_text()[-2000:]


def expected_tables(events: list[Event]) -> dict[str, dict[str, dict[str, Any]]]:
    """``reference`` with each message's recipient: its events' (the status records carry
    it from them)."""
    expected = reference(events)
    recipients = {e["message_id"]: e["recipient"] for _, e in events if "message_id" in e}
    for mid, row in expected["message"].items():
        row["recipient"] = recipients[mid]
    return expected


def tables(dsn: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The three tables in the shape of ``expected_tables`` (a sent message shows no
    failure, as in replay's final state)."""
    got: dict[str, dict[str, dict[str, Any]]] = {}
    with connect(dsn) as conn:
        for kind, table, key, fields in (
            ("message", "mta_delivery_log", "message_id", (*MESSAGE_FIELDS, "recipient")),
            ("address", "mta_address", "address", ADDRESS_FIELDS),
            ("kpi", "mta_delivery_indicators", "delivery_id", KPI_FIELDS),
        ):
            cur = conn.execute(f"SELECT {key}, {', '.join(fields)} FROM {table}")
            rows = {r[0]: dict(zip(fields, r[1:], strict=True)) for r in cur.fetchall()}
            for row in rows.values():
                if row.get("status") == "sent":
                    row["failure_type"] = row["failure_reason"] = None
            got[kind] = rows
    return got


@pytest.mark.timeout(180)
def test_sink_killed_and_its_server_restarted_keeps_tables_equal_to_replay(make_settings, tmp_path):
    settings = make_settings()
    events = SampleCampaign(recipients=800, seed=5).events()
    expected = expected_tables(events)
    pace = random.Random(3)
    worker = WorkerProcess(settings, tmp_path / "worker.log", views=False)
    sinks: list[Sink] = []
    with scratch_database(ADMIN_DSN) as dsn:
        try:
            worker.start()
            sinks.append(Sink(settings, dsn, tmp_path / "sink.log"))
            worker.wait_ready()
            producer = threading.Thread(
                target=produce_paced, args=(settings, events, PRODUCE_S, 100, True)
            )
            producer.start()
            before = 0
            for kill in range(KILLS):
                # Kill once this sink has committed something: mid-stream.
                before = wait_for_progress(dsn, before, tmp_path / "sink.log")
                if kill == 1:
                    # The server goes away and comes back: the sink waits, then goes on.
                    restart_server(dsn)
                    wait_for_log(tmp_path / "sink.log", "is back after")
                    before = wait_for_progress(dsn, written(dsn), tmp_path / "sink.log")
                time.sleep(pace.uniform(0.0, 0.4))
                sinks[-1].kill()
                before = written(dsn)
                sinks.append(Sink(settings, dsn, tmp_path / "sink.log"))
            producer.join()
            deadline = time.monotonic() + 40
            got = tables(dsn)
            while diff(expected, got) and time.monotonic() < deadline:
                time.sleep(0.5)
                got = tables(dsn)
            assert diff(expected, got) == []
            assert len(got["message"]) == len(expected["message"]) > 700
            assert sinks[-1].proc.poll() is None, "the last sink died"
            log = (tmp_path / "sink.log").read_text()
            assert "is unreachable" in log and "is back after" in log
        finally:
            for sink in sinks:
                sink.kill()
            worker.kill()
