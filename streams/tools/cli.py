"""``mta-feedback``: one command for operators, with a subcommand per task.

Exit codes (docs/operations.md): 0 done, 1 not found (or a check that failed), 2 usage or
configuration error (as argparse), 3 a service the command needs is unreachable or refuses
the credentials.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING, Any

from streams.runtime.config import (
    ConfigError,
    KafkaAuthError,
    Settings,
    mask_secrets,
    unknown_variables,
)

if TYPE_CHECKING:
    from streams.serving.views import ViewStore

log = logging.getLogger("mta_feedback")

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"mta-feedback: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _fail(args: argparse.Namespace, text: str, code: int) -> int:
    """One line on stderr naming the command, and its exit code."""
    print(f"mta-feedback {args.command}: {text}", file=sys.stderr)
    return code


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def config_lines(settings: Settings, as_json: bool) -> list[str]:
    """What ``config`` prints: a table, or one JSON object variable → {value, doc}."""
    if as_json:
        rows = settings.masked()
        return [json.dumps({env: {"value": value, "doc": doc} for env, value, doc in rows})]
    text = settings.describe()
    width = max(len(env) for env, _, _ in text)
    return [f"{env:{width}} {value:28} {doc}" for env, value, doc in text]


def cmd_config(args: argparse.Namespace) -> int:
    for line in config_lines(_settings(), args.json):
        print(line)
    return 0


def _with_views(
    func: Callable[[argparse.Namespace, ViewStore], int],
) -> Callable[[argparse.Namespace], int]:
    """Runs ``func`` over the Redis views; Redis unreachable or refusing the login is one
    line and exit code 3, not a traceback."""

    @functools.wraps(func)
    def command(args: argparse.Namespace) -> int:
        import redis

        from streams.serving.views import ViewStore

        settings = _settings()
        where = mask_secrets(settings.redis_url)
        try:
            store = ViewStore.from_settings(settings)
        except ValueError as exc:
            return _fail(args, f"REDIS_URL={where}: {exc}", EXIT_USAGE)
        try:
            return func(args, store)
        except redis.AuthenticationError as exc:
            text = f"Redis at {where} refused the login: {_first_line(exc)}"
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            text = f"Redis at {where} is unreachable: {_first_line(exc)}"
        except redis.RedisError as exc:  # not Redis, or a user without the permissions
            text = f"Redis at {where} cannot be used: {_first_line(exc)}"
        return _fail(args, text, EXIT_UNREACHABLE)

    return command


def _check_broker(
    args: argparse.Namespace, settings: Settings, topic: str | None = None
) -> int | None:
    """None when the broker answers (and has ``topic``); else one line and exit code 3 (1
    for a missing topic). A Kafka client alone would retry, log and time out quietly."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from streams.tools.stack import answers

    servers = settings.bootstrap_servers
    if not any(
        answers(host.strip("[]"), int(port), timeout=2.0)
        for host, _, port in (s.strip().rpartition(":") for s in servers.split(","))
    ):
        return _fail(args, f"Kafka broker at {servers} is unreachable", EXIT_UNREACHABLE)
    quiet = logging.getLogger("mta_feedback.broker_check")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    admin = AdminClient(
        {"bootstrap.servers": servers, "logger": quiet, **settings.kafka_client_config()}
    )
    try:
        topics = admin.list_topics(timeout=5).topics
    except KafkaException as exc:
        text = f"something answers at {servers}, but not as a Kafka broker: {_first_line(exc)}"
        return _fail(args, text, EXIT_UNREACHABLE)
    except KafkaAuthError as exc:
        return _fail(args, str(exc), EXIT_UNREACHABLE)
    if topic is not None and settings.topic(topic) not in topics:
        return _fail(args, f"topic {settings.topic(topic)} does not exist", EXIT_NOT_FOUND)
    return None


def cmd_stack(args: argparse.Namespace) -> int:
    from streams.tools.stack import Stack, StackError

    # The topic job logs each schema subject it registers and its compatibility level.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stack = Stack(_settings())
    try:
        if args.action == "up":
            states = stack.up()
        elif args.action == "down":
            stopped = stack.down()
            print("stopped: " + (", ".join(stopped) if stopped else "nothing (we started nothing)"))
            return 0
        else:
            states = stack.status()
    except StackError as exc:
        print(f"mta-feedback stack {args.action}: {exc}", file=sys.stderr)
        return 1
    for state in states:
        print(state.describe())
    return 0 if all(s.answering for s in states) else 1


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from streams.runtime.app import build_app

    settings = _settings()
    parts = build_app(settings)
    if settings.redis_views and not args.no_views:
        from streams.serving.views import ViewUpdater

        updater = ViewUpdater(settings)
        threading.Thread(target=updater.run, name="redis-views", daemon=True).start()
    worker = faust.Worker(parts.app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
    return 0


def cmd_views(_args: argparse.Namespace) -> int:
    from streams.serving.views import ViewUpdater

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    updater = ViewUpdater(_settings())
    try:
        updater.run()
    except KeyboardInterrupt:
        updater.stop()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.domain.bounce.rules import RulesError
    from streams.domain.control.mx_rules import MxRulesError
    from streams.tools import replay

    try:
        return replay.run(args.file, settings=_settings())
    except (RulesError, MxRulesError) as exc:
        print(f"mta-feedback replay: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_qualify(args: argparse.Namespace) -> int:
    from streams.tools import qualify

    return qualify.run(args)


def _print_record(title: str, record: dict[str, Any] | None, as_json: bool) -> int:
    if record is None:
        print(f"{title}: not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    if as_json:
        print(json.dumps(record, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in record.items():
        table.add_row(key, "" if value is None else str(value))
    Console().print(table)
    return 0


@_with_views
def cmd_status(args: argparse.Namespace, store: ViewStore) -> int:
    if args.message:
        return _print_record(f"message {args.message}", store.read("msg", args.message), args.json)
    if args.address:
        address = args.address.lower()
        record = store.read("addr", address)
        if record is not None:
            record["listed"] = store.is_listed(address)
        return _print_record("address", record, args.json)
    return _print_record(f"delivery {args.delivery}", store.read("kpi", args.delivery), args.json)


def cmd_bench(args: argparse.Namespace) -> int:
    from streams.tools import bench

    return bench.main(
        args.events,
        args.seed,
        args.latency_load,
        args.store,
        args.feedback_triggers,
        args.workers,
    )


@_with_views
def cmd_throttle(args: argparse.Namespace, store: ViewStore) -> int:
    from rich.console import Console
    from rich.table import Table

    from streams.pipeline.records import THROTTLE_FIELDS

    if args.key:
        return _print_record(f"throttle {args.key}", store.read("throttle", args.key), args.json)
    rows = sorted(store.scan("throttle"), key=lambda r: str(r.get("key")))
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    table = Table(title="Throttle settings (control topic mirror)")
    columns = THROTTLE_FIELDS
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(table)
    if not rows:
        print("no throttle settings have left their baseline yet", file=sys.stderr)
    return 0


@_with_views
def cmd_reputation(args: argparse.Namespace, store: ViewStore) -> int:
    return _print_record(f"reputation {args.key}", store.read("reputation", args.key), args.json)


def cmd_dlq(args: argparse.Namespace) -> int:
    from streams.serving.consumer import OutputConsumer

    settings = _settings()
    failed = _check_broker(args, settings, "dlq")
    if failed is not None:
        return failed
    shown = 0
    try:
        with OutputConsumer(settings, "dlq") as consumer:
            for record in consumer.records(idle_timeout=args.wait, max_wait=args.wait * 10):
                value = dict(record.value)
                value["value"] = f"<{len(value['value'] or b'')} bytes>"
                value["key"] = None if value["key"] is None else f"<{len(value['key'])} bytes>"
                print(json.dumps(value, sort_keys=True))
                shown += 1
                if shown >= args.limit:
                    break
    except KafkaAuthError as exc:
        return _fail(args, str(exc), EXIT_UNREACHABLE)
    print(f"{shown} dead letters", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.tools import demo

    return demo.run(recipients=args.recipients, seed=args.seed)


def cmd_produce_sample(args: argparse.Namespace) -> int:
    from streams.runtime.producer import EventProducer, ProducerError
    from streams.testing.sample import SampleCampaign

    settings = _settings()
    failed = _check_broker(args, settings)
    if failed is not None:
        return failed
    campaign = SampleCampaign(recipients=args.recipients, seed=args.seed, delivery_id=args.delivery)
    events = campaign.events()
    try:
        with EventProducer(settings) as producer:
            for family, event in events:
                producer.send(family, event)
    except KafkaAuthError as exc:
        return _fail(args, str(exc), EXIT_UNREACHABLE)
    except ProducerError as exc:
        print(f"mta-feedback produce-sample: {exc}", file=sys.stderr)
        return 1
    print(f"produced {len(events)} events for {args.recipients} recipients ({args.delivery})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mta-feedback",
        description="Feedback and control plane of an Enhanced-MTA style sending platform.",
        epilog="Exit codes: 0 done, 1 not found, 2 usage or configuration error, "
        "3 a service (Redis, the broker) unreachable or refusing the credentials.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str) -> Any:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        return p

    p = add("config", cmd_config, "print the effective settings and their variables")
    p.add_argument("--json", action="store_true", help="one JSON object, for machines")
    p = add("stack", cmd_stack, "start, stop or inspect the embedded broker and Redis")
    p.add_argument("action", choices=["up", "down", "status"])
    p = add("worker", cmd_worker, "run a stream worker (Faust) and the Redis view updater")
    p.add_argument("--no-views", action="store_true", help="do not write the Redis views")
    add("views", cmd_views, "run only the Redis view updater")
    p = add("replay", cmd_replay, "run the pipeline over a JSON-lines file, no broker")
    p.add_argument("file", help="input events, one JSON object per line ('-' for stdin)")
    p = add("qualify", cmd_qualify, "qualify SMTP replies or DSN/ARF messages")
    from streams.tools import qualify

    qualify.add_arguments(p)
    p = add("status", cmd_status, "show a message, address or delivery from the Redis views")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--message", metavar="ID")
    which.add_argument("--address", metavar="A")
    which.add_argument("--delivery", metavar="D")
    p.add_argument("--json", action="store_true", help="one JSON object, for machines")
    p = add("demo", cmd_demo, "run a sample campaign through the embedded stack, print a summary")
    p.add_argument("--recipients", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    from streams.sim import cli as sim_cli

    p = add(
        "simulate",
        sim_cli.run,
        "closed-loop simulation: adaptive against static and oracle limits, scenarios, sweeps",
    )
    sim_cli.add_arguments(p)
    p = add("produce-sample", cmd_produce_sample, "produce a generated sample campaign")
    p.add_argument("--recipients", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--delivery", default="D1", help="delivery id of the campaign")
    p = add("bench", cmd_bench, "throughput and latency of one worker beside a raw baseline")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--latency-load",
        type=float,
        default=0.5,
        help="latency is measured at this share of the measured maximum rate (default 0.5)",
    )
    p.add_argument(
        "--feedback-triggers",
        type=int,
        default=200,
        help="rate-limit replies whose feedback latency is measured, 50 ms apart (default 200)",
    )
    p.add_argument(
        "--store",
        choices=("memory://", "rocksdb://"),
        help="the worker's table store (default: MTA_STORE)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pipeline workers in one consumer group, at most MTA_PARTITIONS (default 1)",
    )
    p = add("throttle", cmd_throttle, "show throttle settings from the Redis mirror")
    p.add_argument("key", nargs="?", help="e.g. group:google, domain:example.org")
    p.add_argument("--json", action="store_true", help="JSON lines, for machines")
    p = add("reputation", cmd_reputation, "show a key's rolling reputation window")
    p.add_argument("key", help="e.g. group:google, domain:gmail.com, ip_group:192.0.2.1|google")
    p.add_argument("--json", action="store_true", help="one JSON object, for machines")
    for name, module, text in (
        ("convert", "streams.tools.convert", "print an MTA's own records as input events"),
        ("ingest", "streams.tools.ingest", "send an MTA's own records to the input topics"),
        ("serve", "streams.service.server", "run the HTTP service (webhooks, KumoMTA TSA API)"),
        (
            "follow-throttle",
            "streams.tools.follow_throttle",
            "turn throttle changes into an MTA's own control (PowerMTA, JSON lines)",
        ),
        (
            "sink-postgres",
            "streams.tools.sink_postgres",
            "keep delivery log, addresses and indicators current in PostgreSQL",
        ),
    ):
        tool = importlib.import_module(module)
        p = add(name, tool.run, text)
        tool.add_arguments(p)
    p = add("dlq", cmd_dlq, "print dead letters (reason and source) from the dead-letter topic")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--wait", type=float, default=3.0, help="seconds without news to stop")
    return parser


def _version() -> str:
    try:
        return metadata.version("mta-feedback")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Once per command, from the process environment; library use of Settings never warns.
    for line in unknown_variables(os.environ):
        print(f"mta-feedback: warning: {line}", file=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's own flush at exit
        # from failing again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
