"""Retired keys in the Redis views: tombstones and the TTL backstop.

When a message or an address retires from the workers' tables, its output topic gets a
tombstone: the key, a null value, and the headers ``version`` (the last version published)
and ``event_time`` (the pipeline clock then). Every record published before it is at or
before it in both; a record published after it (the key seen again: it goes on from the
tombstone's version) is after it in version.

The tombstone deletes the hash (and the address from the sets and indexes) unless the hash
is newer than it (a higher version or a later event time), and leaves a ``P:gone`` marker
holding its event time and version. A status or address record at or before the marker in
both is of the retired life (a late or replayed record: an updater that lost its
partitions in a rebalance, a batch applied again) and is skipped; any other is applied, so
a reborn key comes back even within the same millisecond. The marker expires with a final
message's TTL; a rebuild replays the tombstones, and with them the markers.

TTL backstop, should a tombstone never arrive: a final message (status ``sent`` or
``failed``, ``message_status.is_terminal``; a sent message may still fail, and that record
sets the TTL again) expires ``MTA_MESSAGE_RETENTION_S`` + one day after its last record
reached Redis (Redis's clock, where the workers count event time); a ``valid`` address
``MTA_ADDRESS_RETENTION_S`` + one day after. Each record replaces its hash, so a record of
any other state (a pending message, an address with errors, quarantined or denylisted)
leaves the hash without a TTL; KPI, throttle and reputation keys never expire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.domain.recipient import address_health, message_status
from streams.runtime.config import Settings

# The TTL backstop fires this long after the workers would have retired the key themselves.
TTL_MARGIN_S = 86_400
MARKER_TTL_S = 3_600

# The kinds whose keys retire (a tombstone on their topic); the others never do.
TOMBSTONE_KINDS = ("msg", "addr")
FINAL_STATUSES = (message_status.SENT, message_status.FAILED)


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A retired key: a record of the topic with a null value. ``version`` and
    ``event_time`` come from its headers; a missing one is not compared, and without both
    the tombstone leaves no marker."""

    key: str
    version: int | None = None
    event_time: int | None = None


def tombstone(
    key: bytes | None, headers: list[tuple[str, bytes | None]] | None
) -> Tombstone | None:
    """The tombstone of a null-valued record; None when it has no key (nothing to delete)."""
    if key is None:
        return None
    found = dict(headers or ())
    return Tombstone(
        key.decode(errors="replace"),
        _header_int(found.get("version")),
        _header_int(found.get("event_time")),
    )


def _header_int(raw: bytes | None) -> int | None:
    """An ASCII decimal header; None when missing or not a number."""
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Expiry:
    """The TTLs (s) of the backstop (final messages, valid addresses) and of the tombstone
    markers. A marker only has to outlast the records a reader may apply again after the
    tombstone (an updater that replays a batch after a crash or a rebalance: minutes; a
    rebuild reads the tombstone itself after them): an hour, as the pipeline itself
    refuses late events (streams/pipeline/feedback.py). Markers then cost Redis about an
    hour's worth of retirements."""

    message_s: int
    address_s: int
    marker_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Expiry:
        message_s = settings.message_retention_s + TTL_MARGIN_S
        return cls(message_s, settings.address_retention_s + TTL_MARGIN_S, MARKER_TTL_S)

    def ttl_s(self, kind: str, record: dict[str, Any]) -> int | None:
        """The TTL of a record's hash; None: it never expires."""
        if kind == "msg" and record.get("status") in FINAL_STATUSES:
            return self.message_s
        if kind == "addr" and record.get("state") == address_health.VALID:
            return self.address_s
        return None
