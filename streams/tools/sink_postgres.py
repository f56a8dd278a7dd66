"""``mta-feedback sink-postgres``: keep the delivery log, the address table and the
delivery indicators current in PostgreSQL, exactly once (streams/serving/pg_sink.py;
docs/postgres-sink.md).

Applies the migrations first, then consumes until SIGINT or SIGTERM. ``--migrate`` only
applies them; ``--purge-older-than 90d`` only deletes old delivery-log rows and old
remembered address tombstones. Exit code 2 for bad settings, 3 when the broker is
unreachable at start; PostgreSQL going away is waited out.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from streams.runtime.config import ConfigError, Settings
from streams.serving.pg_config import PgSettings, mask_dsn
from streams.serving.pg_rows import parse_duration

log = logging.getLogger("mta_feedback.sink_postgres")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``sink-postgres`` subcommand."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--migrate", action="store_true", help="apply the migrations, then exit")
    what.add_argument(
        "--purge-older-than",
        metavar="AGE",
        type=_duration,
        help="delete delivery-log rows whose last event, and remembered address tombstones"
        " whose delete, are older than AGE (90d, 12h...), then exit",
    )
    what.add_argument(
        "--idle-exit",
        metavar="S",
        type=float,
        help="stop once no record arrived for S seconds (a backlog drained)",
    )


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fail(text: str, code: int) -> int:
    print(f"mta-feedback sink-postgres: {text}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Body of ``mta-feedback sink-postgres``; returns the exit code."""
    try:
        settings, pg = Settings.from_env(), PgSettings.from_env()
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    from streams.serving.pg_db import connect, purge_old_rows, where

    if args.purge_older_than is not None:
        import psycopg

        try:
            with connect(pg.dsn) as conn:
                log_rows, gone = purge_old_rows(conn, args.purge_older_than)
        except psycopg.Error as exc:
            return _fail(f"PostgreSQL at {where(pg.dsn)}: {str(exc).strip()}", 3)
        print(f"purged {log_rows} delivery-log rows, {gone} remembered address tombstones")
        return 0
    from streams.serving.pg_sink import PgSink
    from streams.tools.cli import _check_broker

    if not args.migrate:
        failed = _check_broker(args, settings, "status")
        if failed is not None:
            return failed
    log.info("sink-postgres: database %s, group %s", mask_dsn(pg.dsn), pg.group_id(settings.app_id))
    sink = PgSink(settings, pg)
    applied = sink.migrate()
    log.info("migrations applied: %s", ", ".join(applied) or "none (up to date)")
    if args.migrate:
        sink.close()
        return 0

    def stop(_signum: int, _frame: FrameType | None) -> None:
        sink.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sink.run(idle_exit_s=args.idle_exit)
    log.info(
        "sink-postgres stopped: %d records written, %d dead letters",
        sink.written,
        sink.dead_letters,
    )
    return 0
