"""``mta-feedback convert --from FORMAT [FILE|-]``: an MTA's own records → the input events
as JSON lines, exactly as ``mta-feedback replay`` reads them, so that
``mta-feedback convert --from X FILE | mta-feedback replay /dev/stdin`` shows what a log does.

Bad records are reported on stderr as ``line N: reason`` (``message N (name): reason`` for
a mailbox), never with their content, and counted; the run goes on. The last line on
stderr is the summary: events by family, skipped records by kind, bad records by reason
(``--stats-json``: that summary as one JSON object). Exit code 0 once the input was read,
even with bad records; 2 when it cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TextIO

from streams.adapters.base import Bad, Converter, ConvertStats, Event, Result
from streams.adapters.registry import FORMATS, converter
from streams.tools.vendor_files import InputError, Unit, units

TOO_LONG_REASON = "line: too long to be a record"


def add_format_arguments(parser: argparse.ArgumentParser) -> None:
    """``--from`` and the input, shared with ``ingest``."""
    parser.add_argument(
        "--from",
        dest="fmt",
        required=True,
        choices=FORMATS,
        help="the MTA's format: webhook batches, log records, accounting CSV, mail log, "
        "or bounce messages (a Maildir, an mbox, .eml files)",
    )
    parser.add_argument(
        "file",
        nargs="?",
        default="-",
        help="input file, directory (kumomta segments, dsn Maildir or .eml files) or - "
        "for stdin (default)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_format_arguments(parser)
    parser.add_argument(
        "--stats-json",
        action="store_true",
        help="end with the summary as one JSON object on stderr instead of a sentence",
    )


def feed(conv: Converter, unit: Unit) -> list[Result]:
    """The converter's results for one unit (a unit too long to read is a bad record)."""
    if unit.text is None:
        return [Bad("", TOO_LONG_REASON)]
    return conv.feed(unit.text)


def report_bad(label: str, results: list[Result], err: TextIO) -> None:
    for r in results:
        if isinstance(r, Bad):
            err.write(f"{label}: {r.reason}\n")


def summary(stats: ConvertStats) -> str:
    """One sentence: events by family, skipped by kind, bad by reason."""

    def listing(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items())

    d = stats.to_dict()
    parts = [f"{sum(d['events'].values())} events ({listing(d['events']) or 'none'})"]
    parts.append(f"{sum(d['skipped'].values())} skipped ({listing(d['skipped']) or 'none'})")
    parts.append(f"{d['bad']} bad ({listing(d['bad_reasons']) or 'none'})")
    return "; ".join(parts)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    stats = ConvertStats()

    def emit(label: str, results: list[Result]) -> None:
        stats.count(results)
        report_bad(label, results, err)
        for r in results:
            if isinstance(r, Event):
                out.write(json.dumps(r.to_json(), sort_keys=True) + "\n")

    conv = converter(args.fmt)
    try:
        for unit in units(args.fmt, args.file):
            emit(unit.label, feed(conv, unit))
        emit("end of input", conv.finish())
    except InputError as exc:
        err.write(f"mta-feedback convert: {exc}\n")
        return 2
    except BrokenPipeError:
        # The reader stopped early (``| head``): not an error; stdout goes nowhere from now
        # on, so that the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    out.flush()
    if args.stats_json:
        err.write(json.dumps(stats.to_dict(), sort_keys=True) + "\n")
    else:
        err.write(f"mta-feedback convert: {summary(stats)}\n")
    return 0
