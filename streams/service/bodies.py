"""Request bodies → the records they hold, each at its index; what cannot be read becomes a
``Bad`` record at that index, so that the request is never refused for its content.

- a SparkPost batch: a JSON array; each element is a record (a single object is taken
  as a batch of one);
- KumoMTA records: one JSON object, a JSON array of objects, or JSON lines (one object
  per line; blank lines are not records and do not count in the indexes).

A body that is not UTF-8 or not JSON at all is one bad record at index 0 (its text, up to
``MAX_RAW_CHARS``, goes to the dead-letter topic).
"""

from __future__ import annotations

import json
from typing import Any

from streams.adapters.base import Bad, bad


def _text(body: bytes) -> str | Bad:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return bad(body.decode("utf-8", "replace"), f"body is not UTF-8 text: {exc.reason}")
    if not text.strip():
        return bad(text, "body is empty")
    return text


def _parse(text: str) -> Any | Bad:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        return bad(text, f"not JSON: {str(exc)[:200]}")


def sparkpost_batch(body: bytes) -> list[Any | Bad]:
    """The elements of a SparkPost webhook batch, in order."""
    text = _text(body)
    if isinstance(text, Bad):
        return [text]
    value = _parse(text)
    if isinstance(value, list):
        return value
    if isinstance(value, dict | Bad):
        return [value]
    return [bad(text, "body is not a JSON array of SparkPost events")]


def kumo_records(body: bytes) -> list[Any | Bad]:
    """KumoMTA log records: one object, an array, or JSON lines."""
    text = _text(body)
    if isinstance(text, Bad):
        return [text]
    value = _parse(text)
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, Bad):
        return [bad(text, "body is not a JSON object, array or JSON lines of log records")]
    # Only a newline ends a line: JSON strings may hold other line separators.
    lines = [line for line in text.split("\n") if line.strip()]
    if text.lstrip().startswith("[") or len(lines) < 2:
        return [value]
    return [_parse(line) for line in lines]
