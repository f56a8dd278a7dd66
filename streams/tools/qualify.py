"""``mta-feedback qualify``: qualify SMTP replies or DSN/ARF messages from the shell.

Input lines are JSON objects (any of smtp_code, enhanced_status, diagnostic, provider)
or bare reply texts; each gives one JSON line on stdout. ``--dsn`` takes message files
instead and prints one JSON line per recipient. Bad lines give a result with
``failure_type`` "undefined" and an ``error`` field; the run goes on. Exit code 0, or 2
when the rules file or an input file cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from streams.domain.bounce.dsn import parse_report
from streams.domain.bounce.qualifier import Qualifier, load_qualifier
from streams.domain.bounce.rules import RulesError
from streams.domain.types import Qualification

# A line longer than this is not a reply; it is reported, not qualified.
MAX_LINE = 64 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``qualify`` subcommand."""
    parser.add_argument(
        "file",
        nargs="?",
        help="file of replies, one per line: JSON object or bare reply text (default: stdin)",
    )
    parser.add_argument(
        "--dsn",
        nargs="+",
        metavar="FILE.eml",
        help="qualify DSN / ARF / auto-reply messages instead, one JSON line per recipient",
    )
    parser.add_argument("--rules", metavar="FILE", help="operator rules file (TOML)")


def run(args: argparse.Namespace) -> int:
    """Body of ``mta-feedback qualify``; returns the exit code."""
    out: TextIO = sys.stdout
    try:
        qualifier = load_qualifier(args.rules)
    except RulesError as exc:
        print(f"mta-feedback qualify: {exc}", file=sys.stderr)
        return 2
    if args.dsn:
        return _run_dsn(args.dsn, qualifier, out)
    if args.file:
        try:
            with Path(args.file).open("rb") as fh:
                _run_lines(fh, qualifier, out)
        except OSError as exc:
            print(
                f"mta-feedback qualify: cannot read {args.file}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
        return 0
    _run_lines(sys.stdin.buffer, qualifier, out)
    return 0


def _result(q: Qualification) -> dict[str, Any]:
    return {
        "failure_type": q.failure_type,
        "failure_reason": q.failure_reason,
        "bounce_class": q.bounce_class,
        "rule": q.rule,
        "rate_limit": q.rate_limit,
    }


def _error(message: str) -> dict[str, Any]:
    return _result(Qualification("undefined", "Not defined", 1, "input-error")) | {"error": message}


def _lines(stream: BinaryIO) -> Iterator[bytes | None]:
    """Lines of the stream; None for a line over MAX_LINE (its rest is skipped)."""
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := stream.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield line


def qualify_line(line: str, qualifier: Qualifier) -> dict[str, Any]:
    """One input line -> one output object."""
    text = line.strip()
    if not text:
        return _error("empty line")
    if not text.startswith("{"):
        return _result(qualifier.qualify_text(text))
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return _error(f"invalid JSON: {exc}")
    if not isinstance(obj, dict):
        return _error("JSON line must be an object")
    code = obj.get("smtp_code")
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code.strip())
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        return _error("smtp_code must be an integer")
    fields = {k: obj.get(k) for k in ("enhanced_status", "diagnostic", "provider")}
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            return _error(f"{key} must be a string")
    return _result(
        qualifier.qualify(code, fields["enhanced_status"], fields["diagnostic"], fields["provider"])
    )


def _run_lines(stream: BinaryIO, qualifier: Qualifier, out: TextIO) -> None:
    for raw in _lines(stream):
        if raw is None:
            result = _error(f"line longer than {MAX_LINE} bytes")
        else:
            result = qualify_line(raw.decode("utf-8", errors="replace"), qualifier)
        out.write(json.dumps(result, ensure_ascii=False) + "\n")


def _run_dsn(files: list[str], qualifier: Qualifier, out: TextIO) -> int:
    code = 0
    for name in files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            print(
                f"mta-feedback qualify: cannot read {name}: {exc.strerror or exc}", file=sys.stderr
            )
            code = 2
            continue
        report = parse_report(raw, qualifier)
        if not report.results:
            out.write(json.dumps({"file": name, "kind": report.kind, "recipient": None}) + "\n")
        for item in report.results:
            line = {"file": name, "kind": report.kind, "recipient": item.recipient}
            line |= {
                k: v for k, v in asdict(item).items() if k not in ("recipient", "qualification")
            }
            line |= _result(item.qualification)
            if report.feedback_type:
                line["feedback_type"] = report.feedback_type
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return code
