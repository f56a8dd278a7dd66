"""PostgreSQL plumbing of the sink: connections, versioned migrations, stored offsets,
the purge of old delivery-log rows and remembered tombstones, and throw-away databases
for tests and benchmarks.

Migrations are the files ``streams/serving/migrations/NNNN_name.sql``, applied in order,
each in its own transaction with its number recorded in ``mta_migrations``; an advisory
lock keeps two sinks starting together from applying one twice.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import NamedTuple

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

APPLICATION_NAME = "mta-feedback sink-postgres"
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# Any fixed number: the lock that serialises migrations across processes.
_MIGRATION_LOCK = 0x6D7461_5047


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The shipped migrations, lowest number first."""
    found = []
    for entry in files("streams.serving").joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


def where(dsn: str) -> str:
    """host:port/dbname of a DSN, for log lines (never the password)."""
    info = conninfo_to_dict(dsn)
    host = info.get("host") or info.get("hostaddr") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def connect(dsn: str, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(
        dsn, autocommit=autocommit, application_name=APPLICATION_NAME, connect_timeout=5
    )


def migrate(conn: psycopg.Connection) -> list[Migration]:
    """Apply the migrations not yet applied; returns those it applied."""
    applied: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS mta_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM mta_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO mta_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            applied.append(migration)
    return applied


def stored_offsets(
    conn: psycopg.Connection, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The next offset to read of each of ``partitions`` that the sink has written."""
    wanted = list(partitions)
    if not wanted:
        return {}
    rows = conn.execute(
        "SELECT topic, partition, next_offset FROM mta_sink_offsets"
        " WHERE (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
        ([t for t, _ in wanted], [p for _, p in wanted]),
    ).fetchall()
    conn.commit()
    return {(topic, partition): offset for topic, partition, offset in rows}


def purge_old_rows(conn: psycopg.Connection, older_than_s: float) -> tuple[int, int]:
    """Delete delivery-log rows whose last event, and remembered address tombstones whose
    delete, are older than ``older_than_s`` (wall clock); returns how many of each.
    Address and indicator rows are never purged."""
    with conn.transaction():
        log_rows = conn.execute(
            "DELETE FROM mta_delivery_log"
            " WHERE last_event_time < now() - make_interval(secs => %s)",
            (older_than_s,),
        ).rowcount
        gone = conn.execute(
            "DELETE FROM mta_address_gone WHERE deleted_at < now() - make_interval(secs => %s)",
            (older_than_s,),
        ).rowcount
    return log_rows, gone


@contextmanager
def scratch_database(admin_dsn: str, prefix: str = "mta_test") -> Iterator[str]:
    """A fresh, empty database on the server of ``admin_dsn``, dropped afterwards (its
    connections terminated first); yields its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def terminate_backends(admin_dsn: str, dsn: str) -> int:
    """Terminate the sink's connections to the database of ``dsn`` (as a server restart
    would); returns how many."""
    dbname = conninfo_to_dict(dsn).get("dbname")
    with connect(admin_dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
            (dbname, APPLICATION_NAME),
        ).fetchall()
    return len(rows)
