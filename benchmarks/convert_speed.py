"""``mta-feedback convert`` speed per format, on one core, in process.

For each format, the fixture files of tests/fixtures/vendors/<format>/ (good and bad
records alike) are read into units the way ``convert`` reads them, repeated to about
``--lines`` input lines, and fed to one converter; each event is serialised as ``convert``
prints it. Beside it, in the same run, a baseline on the same units: the bare parse of
the format (``json.loads`` of each JSON unit, ``csv`` of each accounting line, splitting
each syslog line, ``email`` parsing of each message), so that the figures compare on a
machine whose speed varies. One JSON line per format.

Repeated units repeat work that caches may absorb (the bounce qualifier's reply cache in
the ``dsn`` adapter): the figures are an upper bound for logs with varied replies.
"""

from __future__ import annotations

import argparse
import csv
import email
import email.policy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.adapters.base import Event
from streams.adapters.registry import FORMATS, converter
from streams.tools.vendor_files import units

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vendors"


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _csv(text: str) -> Any:
    return next(csv.reader([text]), None)


def _syslog(text: str) -> Any:
    return text.split(" ", 5)


def _message(text: str) -> Any:
    return email.message_from_bytes(
        text.encode("utf-8", "surrogateescape"), policy=email.policy.compat32
    )


BASELINES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "sparkpost": ("json.loads", _json),
    "kumomta": ("json.loads", _json),
    "pmta": ("csv.reader", _csv),
    "postfix": ("str.split", _syslog),
    "dsn": ("email.message_from_bytes", _message),
}


def fixture_units(fmt: str) -> list[str]:
    """Every unit of the format's fixture files, as ``convert`` reads them."""
    texts: list[str] = []
    for path in sorted((FIXTURES / fmt).iterdir()):
        if path.name.endswith(".md"):
            continue
        texts += [u.text for u in units(fmt, str(path)) if u.text is not None]
    return texts


def repeated(texts: list[str], lines: int) -> list[str]:
    out: list[str] = []
    count = 0
    while count < lines:
        for text in texts:
            out.append(text)
            count += text.count("\n") + 1
    return out


def timed(func: Callable[[], object]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def convert_all(fmt: str, texts: list[str]) -> int:
    conv = converter(fmt)
    events = 0
    for text in texts:
        for result in conv.feed(text):
            if isinstance(result, Event):
                json.dumps(result.to_json(), sort_keys=True)
                events += 1
    for result in conv.finish():
        if isinstance(result, Event):
            json.dumps(result.to_json(), sort_keys=True)
            events += 1
    return events


def measure(fmt: str, lines: int) -> dict[str, Any]:
    texts = repeated(fixture_units(fmt), lines)
    total_lines = sum(text.count("\n") + 1 for text in texts)
    name, parse = BASELINES[fmt]
    convert_all(fmt, texts[:200])  # warm up: imports, rule compilation, caches
    events = 0

    def run_convert() -> None:
        nonlocal events
        events = convert_all(fmt, texts)

    convert_s = timed(run_convert)
    baseline_s = timed(lambda: [parse(text) for text in texts])
    return {
        "bench": "convert",
        "format": fmt,
        "units": len(texts),
        "lines": total_lines,
        "events": events,
        "convert_lines_per_s": round(total_lines / convert_s),
        "convert_units_per_s": round(len(texts) / convert_s),
        "baseline": name,
        "baseline_lines_per_s": round(total_lines / baseline_s),
        "share_of_baseline": round(baseline_s / convert_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000, help="input lines per format")
    parser.add_argument("--format", choices=FORMATS, action="append", help="default: all")
    args = parser.parse_args()
    for fmt in args.format or FORMATS:
        if (FIXTURES / fmt).is_dir():
            print(json.dumps(measure(fmt, args.lines)), flush=True)


if __name__ == "__main__":
    main()
