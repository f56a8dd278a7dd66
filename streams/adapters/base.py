"""What every vendor adapter shares: its results, its counters and stable event ids.

An adapter turns the records an MTA writes (a webhook batch item, a log line, an accounting
row, a bounce message) into the project's input events, in the JSON shape that
``mta-feedback replay`` reads: ``{"family": ..., **event}`` with times in epoch
milliseconds. Adapters are pure: no broker, no HTTP, no Redis; the tools and the HTTP
service feed them and send what they return.

A record gives a list of results, each one of:

- ``Event``: an input event;
- ``Bad``: the record (or a part of it) cannot be used, with the reason; it goes to the
  dead-letter topic with its raw text, and nothing else is lost;
- ``Skip``: a record that is understood but carries no status (an open, a click, inbound
  mail), counted by what it was.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Longest raw text kept with a bad record (the dead-letter value, the error listing).
MAX_RAW_CHARS = 65_536
# Who decided a failure (the input events' optional ``origin``): only a remote verdict
# counts against an address or a domain's reputation.
LOCAL = "local"
CONNECTION = "connection"


@dataclass(frozen=True, slots=True)
class Event:
    family: str  # send, bounce or retry
    event: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The line ``replay`` reads (``None`` fields left out)."""
        return {"family": self.family, **{k: v for k, v in self.event.items() if v is not None}}


@dataclass(frozen=True, slots=True)
class Bad:
    raw: str
    reason: str


@dataclass(frozen=True, slots=True)
class Skip:
    what: str  # e.g. "open", "relay_delivery": the counter it adds to


Result = Event | Bad | Skip


@dataclass
class ConvertStats:
    """What a run converted: events per family, skipped records by kind, bad records."""

    events: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    bad: int = 0
    bad_reasons: Counter[str] = field(default_factory=Counter)

    def count(self, results: list[Result]) -> None:
        for r in results:
            if isinstance(r, Event):
                self.events[r.family] += 1
            elif isinstance(r, Skip):
                self.skipped[r.what] += 1
            else:
                self.bad += 1
                # The reason up to its first colon: the kind of fault, not the value.
                self.bad_reasons[r.reason.split(":", 1)[0]] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": dict(sorted(self.events.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "bad": self.bad,
            "bad_reasons": dict(sorted(self.bad_reasons.items())),
        }


class AdapterError(ValueError):
    """A record that cannot be used; its message is the reason given with the dead letter."""


class Converter(ABC):
    """One vendor's records → input events. Stateful where the format needs it (a Postfix
    message's lines are joined by queue ID): use one converter per input stream."""

    name: ClassVar[str]

    @abstractmethod
    def feed(self, text: str) -> list[Result]:
        """One unit of the vendor's input: a log line, a JSON line, a webhook body."""

    def finish(self) -> list[Result]:
        """The input is complete: whatever was held back to join records."""
        return []


def stable_id(vendor: str, *parts: Any) -> str:
    """An event id derived from the vendor record itself: the same record converted twice
    gives the same id, so the pipeline counts it once."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return f"{vendor}:{hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest()}"


def bad(raw: Any, reason: str) -> Bad:
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str)
    return Bad(text[:MAX_RAW_CHARS], reason)


def json_units(text: str, what: str) -> Any | Bad:
    """The JSON value of one unit of input, or a ``Bad`` naming ``what`` it should be."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        return bad(text, f"{what}: not JSON ({exc})"[:300])


def message_key(message_id: str, recipient: str, shared: bool) -> str:
    """The pipeline's message id: the MTA's id, plus ``:recipient`` when the MTA's id
    covers several recipients (a Postfix queue ID, a PowerMTA envelope)."""
    return f"{message_id}:{recipient}" if shared else message_id


def normalise_recipient(value: Any) -> str:
    """An address as the input topics take it: angle brackets and surrounding white space
    removed; case is kept (the pipeline lower-cases addresses itself)."""
    if not isinstance(value, str) or not value.strip():
        raise AdapterError("recipient: missing or not a string")
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text
