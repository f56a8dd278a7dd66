"""Adapter results → Kafka records, for ``mta-feedback ingest`` and the HTTP service.

An event is encoded with the input schema and checked exactly as the workers check what
they read (``validate_event``): one that would be dead-lettered there is dead-lettered
here, with its raw text, before it reaches an input topic. A ``Bad`` result becomes a dead
letter with the adapter's reason; a ``Skip`` becomes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import NamedTuple

from streams.adapters.base import Bad, Event, Result, Skip
from streams.pipeline.topics import Topic, input_key
from streams.runtime.codec import Codec, DecodeError
from streams.runtime.validate import validate_event

# error_kind of a dead letter from a vendor record (the workers use decode / invalid /
# processing for what they read).
VENDOR = "vendor"


class Record(NamedTuple):
    topic: Topic  # an input family, or the dead-letter topic
    key: bytes | None
    value: bytes
    error: str | None  # the reason, for a dead letter


def dead_letter(
    codec: Codec,
    source: str,
    index: int,
    raw: str,
    reason: str,
    topic: str | None = None,
    kind: str = VENDOR,
) -> Record:
    """A dead letter for a vendor record: ``source`` names where it came from (a file or
    an HTTP route), ``index`` its line or its place in the batch; ``topic`` is the full
    name of the dead-letter topic (its registry subject is ``<topic>-value``)."""
    value = {
        "event_time": int(time.time() * 1000),
        "source_topic": source,
        "source_partition": -1,
        "source_offset": index,
        "key": None,
        "value": raw.encode("utf-8", "replace"),
        "error": reason[:1000],
        "error_kind": kind,
    }
    return Record(Topic.DLQ, None, codec.encode(Topic.DLQ, value, topic), reason)


def to_record(
    codec: Codec,
    result: Result,
    source: str,
    index: int,
    names: Mapping[str, str] | None = None,
) -> Record | None:
    """The record to produce for one adapter result (None for a skipped one). ``names``
    maps each input family and the dead-letter topic to its full topic name, which names
    the registry subject (``<topic>-value``) as in ``EventProducer``."""
    if isinstance(result, Skip):
        return None
    dlq = names.get(Topic.DLQ) if names else None
    if isinstance(result, Bad):
        return dead_letter(codec, source, index, result.raw, result.reason, dlq)
    assert isinstance(result, Event)
    family = Topic(result.family)
    try:
        value = codec.encode(family, dict(result.event), names[family] if names else None)
        # The writer has checked every field's type, so the dict is what a worker would
        # decode (absent optional fields read as None): no need to decode it again.
        validate_event(family, result.event)
    except DecodeError as exc:
        raw = json.dumps(result.to_json(), sort_keys=True)
        return dead_letter(codec, source, index, raw, exc.reason, dlq, exc.kind)
    except (ValueError, TypeError, KeyError) as exc:
        raw = json.dumps(result.to_json(), sort_keys=True, default=str)
        reason = f"does not fit the {family} schema: {exc}"
        return dead_letter(codec, source, index, raw, reason, dlq, "invalid")
    return Record(family, input_key(str(result.event["recipient"])), value, None)
