"""``mta-feedback ingest --from FORMAT [FILE|-] [--follow]``: an MTA's own records → the
input topics, through the project's producer.

Each event is encoded and checked as the workers check what they read, then produced to
its input topic keyed by recipient; a bad record (or an event the workers would refuse) goes
to the dead-letter topic with its raw text and reason. Records are flushed at least every
second and at the end; progress goes to stderr every few seconds, then a summary.

``--follow`` tails a growing log as ``tail -F`` does (rotation and truncation included) or
watches a mailbox for new messages, until SIGINT or SIGTERM; what was read is flushed
before it stops. Events carry ids derived from the records, so reading a file again (a
restart of ``--follow`` reads the file from its start) counts nothing twice.

Exit code 0 once the input was read (even with bad records), 2 when it cannot be read
(or the settings are wrong), 1 when the broker is unreachable or refuses records.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TextIO

from streams.adapters.base import Converter, ConvertStats, Event, Result
from streams.adapters.registry import converter
from streams.pipeline.topics import INPUT_TOPICS, Topic
from streams.runtime.codec import Codec
from streams.runtime.config import ConfigError, Settings
from streams.runtime.sink import ProducerError, RecordSink
from streams.runtime.vendor_records import to_record
from streams.tools.convert import add_format_arguments, feed, report_bad, summary
from streams.tools.stack import answers
from streams.tools.vendor_files import InputError, LineFollower, MailboxPoller, Unit, units

FLUSH_EVERY_S = 1.0
PROGRESS_EVERY_S = 5.0
POLL_S = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_format_arguments(parser)
    parser.add_argument(
        "--follow",
        action="store_true",
        help="keep reading: new lines of a log (across rotation) or new messages of a "
        "mailbox, until SIGINT or SIGTERM",
    )


class _Stop(Exception):
    """SIGTERM: stop as SIGINT does."""


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


class Ingest:
    """Adapter results → records on the broker, with counts and periodic flushes."""

    def __init__(self, settings: Settings, codec: Codec, sink: RecordSink, source: str) -> None:
        self.settings = settings
        self.codec = codec
        self.sink = sink
        self.source = source
        self.names = {family: settings.topic(family) for family in (*INPUT_TOPICS, Topic.DLQ)}
        self.stats = ConvertStats()
        self.sent: Counter[str] = Counter()  # records by topic
        self.dead_letters = 0
        self.started = time.monotonic()
        self._flushed_at = self._shown_at = self.started
        self._unflushed = 0

    def take(self, label: str, number: int, results: list[Result], err: TextIO) -> None:
        self.stats.count(results)
        report_bad(label, results, err)
        for result in results:
            record = to_record(self.codec, result, self.source, number, self.names)
            if record is None:
                continue
            if record.topic == Topic.DLQ:
                self.dead_letters += 1
                if isinstance(result, Event):  # an event the workers would refuse
                    err.write(f"{label}: {record.error}\n")
            self.sink.produce(self.settings.topic(record.topic), record.key, record.value)
            self.sent[record.topic] += 1
            self._unflushed += 1

    def tick(self, err: TextIO, force: bool = False) -> None:
        """Flush once a second (or now, with ``force``); progress every few seconds."""
        now = time.monotonic()
        if self._unflushed and (force or now - self._flushed_at >= FLUSH_EVERY_S):
            self.sink.flush()
            self._unflushed = 0
            self._flushed_at = now
        if now - self._shown_at >= PROGRESS_EVERY_S:
            self._shown_at = now
            err.write(f"mta-feedback ingest: {self.progress()}\n")
            err.flush()

    def progress(self) -> str:
        total = sum(self.sent.values())
        rate = total / max(time.monotonic() - self.started, 1e-9)
        topics = ", ".join(f"{t} {n}" for t, n in sorted(self.sent.items())) or "none"
        return f"{total} records sent ({rate:,.0f}/s; {topics})"


def run(args: argparse.Namespace) -> int:
    err = sys.stderr
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        err.write(f"mta-feedback ingest: configuration error: {exc}\n")
        return 2
    try:
        source = _source(args)
    except InputError as exc:
        err.write(f"mta-feedback ingest: {exc}\n")
        return 2
    unreachable = _unreachable(settings)
    if unreachable:
        err.write(f"mta-feedback ingest: broker unreachable: {unreachable}\n")
        return 1
    codec = Codec.from_settings(settings)
    ingest = Ingest(settings, codec, RecordSink(settings), f"{args.fmt}:{args.file}")
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        code = _pump(ingest, converter(args.fmt), source, err)
    except ProducerError as exc:
        err.write(f"mta-feedback ingest: the broker did not take the records: {exc}\n")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    err.write(
        f"mta-feedback ingest: {ingest.progress()}; {summary(ingest.stats)}; "
        f"{ingest.dead_letters} dead letters\n"
    )
    return code


def _source(args: argparse.Namespace) -> Iterator[Unit | None]:
    """The units to ingest; with ``--follow``, None whenever nothing new has arrived."""
    if not args.follow or args.file == "-":
        return units(args.fmt, args.file)
    poll = MailboxPoller(args.file) if args.fmt == "dsn" else LineFollower(args.file)
    return _polled(poll.new_units)


def _polled(new_units: Callable[[], Iterator[Unit]]) -> Iterator[Unit | None]:
    while True:
        yield from new_units()
        yield None


def _pump(ingest: Ingest, conv: Converter, source: Iterator[Unit | None], err: TextIO) -> int:
    """Feed, produce and flush until the input ends or a signal stops it; then flush."""
    code = 0
    try:
        for unit in source:
            if unit is None:  # nothing new: send what was read, then wait
                ingest.tick(err, force=True)
                time.sleep(POLL_S)
                continue
            ingest.take(unit.label, unit.number, feed(conv, unit), err)
            ingest.tick(err)
    except (KeyboardInterrupt, _Stop):
        err.write("mta-feedback ingest: stopping; flushing what was read\n")
    except InputError as exc:
        err.write(f"mta-feedback ingest: {exc}\n")
        code = 2
    # A second signal must not cut the last flush short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ingest.take("end of input", 0, conv.finish(), err)
    ingest.tick(err, force=True)
    return code


def _unreachable(settings: Settings) -> str | None:
    """None when a bootstrap server accepts a connection, else why not: said at once,
    rather than after the producer's delivery timeout."""
    servers = [s.strip() for s in settings.bootstrap_servers.split(",")]
    for server in servers:
        host, _, port = server.rpartition(":")
        if answers(host.strip("[]"), int(port), timeout=3.0):
            return None
    return f"no answer from {', '.join(servers)} (MTA_BOOTSTRAP_SERVERS)"
