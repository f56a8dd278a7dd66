"""The values of the two large tables, ``messages`` and ``addresses``, kept compact.

A tracked key's record (its state, what was last published about it, the version, the
source offsets that last changed it, its partition and its due time) is stored as a fixed
11-byte header (format number, partition, due time) and a msgpack array (version, source
offsets, state, view) with no field names and without what the key already says (the
message id). The header lets a scan for due records skip the body. The bytes are what
the table holds, in memory and on disk, and what its changelog carries; ``RecordStore``
decodes on read and encodes on write, so the steps see plain objects.

Format history (a reader accepts every one of them):
- JSON object ``{"s": {...}, "view": {...}, "v", "src", "p", "due"}`` (field names, all
  state fields; what changelogs written before format 1 hold);
- 1: header ``<BHq`` (1, partition, due or ``NO_DUE``), then msgpack
  ``[version, src, state, view]``;
- 2, a retired key: the same header (2, partition, when the marker itself goes), then
  msgpack ``[version, retired_at]``: the last version published and when the tombstone
  was written: a message's events are refused while it stands, an address reborn after
  its tombstone carries on from the version it had.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgpack
import orjson

from streams.domain.recipient.address_health import AddressState, Entry, Health
from streams.domain.recipient.message_status import ErrorFact, MessageState, MessageView

FORMAT = 1
RETIRED_FORMAT = 2
_HEADER = struct.Struct("<BHq")
NO_DUE = -(2**63)
S = TypeVar("S")
V = TypeVar("V")


class ValueFormatError(ValueError):
    """A stored value is in no known format (a corrupt changelog record)."""


@dataclass(slots=True)
class Tracked(Generic[S, V]):
    """One key's record: ``view`` is what was last published, ``src`` the source offset
    (per input family) of the input that last changed it, ``due`` when time alone may
    change it next."""

    state: S
    view: V
    version: int
    src: dict[str, int]
    partition: int
    due: int | None


@dataclass(frozen=True, slots=True)
class Retired:
    """What stays of a key for a while after its tombstone (see the module docstring)."""

    version: int
    retired_at: int
    partition: int
    due: int


# -- messages -------------------------------------------------------------------------


def _fact(f: ErrorFact | None) -> list[Any] | None:
    if f is None:
        return None
    return [f.time, f.event_id, f.failure_type, f.reason, f.bounce_class, f.rule]


def _unfact(v: list[Any] | None) -> ErrorFact | None:
    return None if v is None else ErrorFact(v[0], v[1], v[2], v[3], v[4], v[5])


def _pair(k: tuple[int, str] | None) -> list[Any] | None:
    return None if k is None else [k[0], k[1]]


def _unpair(v: list[Any] | None) -> tuple[int, str] | None:
    return None if v is None else (v[0], v[1])


def _message_state(s: MessageState) -> list[Any]:
    return [
        s.delivery_id,
        s.first_seen,
        s.last_seen,
        s.validity_ms,
        _pair(s.validity_from),
        s.relayed_at,
        s.delivered_at,
        s.expired_at,
        s.complained_at,
        _fact(s.hard_sync),
        _fact(s.hard_async),
        _fact(s.last_error),
        s.attempts,
        _pair(s.last_deferral),
        s.next_attempt_time,
        s.errored,
    ]


def _message_state_from(key: str, a: list[Any]) -> MessageState:
    return MessageState(
        message_id=key,
        delivery_id=a[0],
        first_seen=a[1],
        last_seen=a[2],
        validity_ms=a[3],
        validity_from=_unpair(a[4]),
        relayed_at=a[5],
        delivered_at=a[6],
        expired_at=a[7],
        complained_at=a[8],
        hard_sync=_unfact(a[9]),
        hard_async=_unfact(a[10]),
        last_error=_unfact(a[11]),
        attempts=a[12],
        last_deferral=_unpair(a[13]),
        next_attempt_time=a[14],
        errored=a[15],
    )


def _message_view(v: MessageView) -> list[Any]:
    return [
        v.status,
        v.failure_type,
        v.failure_reason,
        v.bounce_class,
        v.rule,
        v.attempts,
        v.next_attempt_time,
        v.complained,
        v.has_error,
    ]


def _message_view_from(a: list[Any]) -> MessageView:
    return MessageView(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8])


# -- addresses ------------------------------------------------------------------------


def _health(h: Health) -> list[Any]:
    return [
        h.state,
        h.error_count,
        h.reason,
        h.last_counted_at,
        h.last_error_at,
        h.last_success_at,
        h.quarantined_at,
        h.denylisted_at,
        h.operator_at,
        h.operator_event_id,
    ]


def _health_from(a: list[Any]) -> Health:
    return Health(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9])


def _address_state(s: AddressState) -> list[Any]:
    return [
        _health(s.snapshot),
        _pair(s.watermark),
        [[e.time, e.event_id, e.kind, e.reason] for e in s.entries],
        s.max_seen,
        _health(s.current),
        s.resets_at,
    ]


def _address_state_from(_key: str, a: list[Any]) -> AddressState:
    return AddressState(
        snapshot=_health_from(a[0]),
        watermark=_unpair(a[1]),
        entries=tuple(Entry(t, i, k, r) for t, i, k, r in a[2]),
        max_seen=a[3],
        current=_health_from(a[4]),
        resets_at=a[5],
    )


# What an address record shows (the address topic's fields), in this order.
ADDRESS_SHOWN = ("state", "error_count", "reason", "last_error_time")


def _address_view(shown: dict[str, Any]) -> list[Any]:
    return [shown[f] for f in ADDRESS_SHOWN]


def _address_view_from(a: list[Any]) -> dict[str, Any]:
    return dict(zip(ADDRESS_SHOWN, a, strict=True))


# -- the codec ------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordCodec(Generic[S, V]):
    """Encodes a table's ``Tracked`` records; reads every format of the module docstring."""

    state_out: Callable[[S], list[Any]]
    state_in: Callable[[str, list[Any]], S]
    view_out: Callable[[V], list[Any]]
    view_in: Callable[[list[Any]], V]
    # The format before 1: state and view as dicts.
    state_from_dict: Callable[[dict[str, Any]], S]
    view_from_dict: Callable[[dict[str, Any]], V]

    def encode(self, rec: Tracked[S, V] | Retired) -> bytes:
        if isinstance(rec, Retired):
            head = _HEADER.pack(RETIRED_FORMAT, rec.partition, rec.due)
            return head + msgpack.packb([rec.version, rec.retired_at])  # type: ignore[no-any-return]
        head = _HEADER.pack(FORMAT, rec.partition, NO_DUE if rec.due is None else rec.due)
        body = msgpack.packb(
            [rec.version, rec.src, self.state_out(rec.state), self.view_out(rec.view)],
            use_bin_type=True,
        )
        return head + body  # type: ignore[no-any-return]

    def decode(self, key: str, raw: bytes | dict[str, Any]) -> Tracked[S, V] | Retired:
        if isinstance(raw, dict) or raw[:1] == b"{":
            return self._from_json(raw)
        partition, due = self.due_of(raw)
        try:
            a = msgpack.unpackb(memoryview(raw)[_HEADER.size :], raw=False, strict_map_key=False)
            if raw[0] == RETIRED_FORMAT:
                return Retired(a[0], a[1], partition, due)  # type: ignore[arg-type]
            return Tracked(self.state_in(key, a[2]), self.view_in(a[3]), a[0], a[1], partition, due)
        except Exception as exc:  # msgpack and the positional reads raise several types
            raise ValueFormatError(f"table value unreadable: {type(exc).__name__}") from None

    def due_of(self, raw: bytes | dict[str, Any]) -> tuple[int, int | None]:
        """(partition, due time) of a stored value, without decoding its body."""
        if isinstance(raw, dict) or raw[:1] == b"{":
            rec = self._from_json(raw)
            return rec.partition, rec.due
        if len(raw) < _HEADER.size or raw[0] not in (FORMAT, RETIRED_FORMAT):
            found = raw[0] if raw else "empty"
            raise ValueFormatError(f"table value in unknown format {found!r}")
        _fmt, partition, due = _HEADER.unpack_from(raw)
        return partition, None if due == NO_DUE else due

    def _from_json(self, raw: bytes | dict[str, Any]) -> Tracked[S, V]:
        d = raw if isinstance(raw, dict) else orjson.loads(raw)
        return Tracked(
            self.state_from_dict(d["s"]),
            self.view_from_dict(d["view"]),
            d["v"],
            dict(d["src"]),
            d["p"],
            d["due"],
        )


MESSAGES: RecordCodec[MessageState, MessageView] = RecordCodec(
    _message_state,
    _message_state_from,
    _message_view,
    _message_view_from,
    MessageState.from_dict,
    MessageView.from_dict,
)
ADDRESSES: RecordCodec[AddressState, dict[str, Any]] = RecordCodec(
    _address_state,
    _address_state_from,
    _address_view,
    _address_view_from,
    AddressState.from_dict,
    dict,
)


class RecordStore(MutableMapping[str, Tracked[S, V] | Retired]):
    """A table of encoded values seen as a mapping of ``Tracked`` records (and ``Retired``
    markers).

    ``raw`` is a Faust table (memory or RocksDB) in the workers, a dict in ``replay``."""

    def __init__(
        self, raw: MutableMapping[str, Any], codec: RecordCodec[S, V], lazy_scan: bool = False
    ) -> None:
        self.raw = raw
        self.codec = codec
        # True when ``raw`` may be written while a scan of it is under way (RocksDB: its
        # iterators read a snapshot); otherwise a scan goes over a copy of the key list.
        self.lazy_scan = lazy_scan

    def __getitem__(self, key: str) -> Tracked[S, V] | Retired:
        return self.codec.decode(key, self.raw[key])

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else self.codec.decode(key, value)

    def __setitem__(self, key: str, rec: Tracked[S, V] | Retired) -> None:
        self.raw[key] = self.codec.encode(rec)

    def __delitem__(self, key: str) -> None:
        del self.raw[key]

    def __contains__(self, key: object) -> bool:
        return key in self.raw

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def live(self, key: str) -> Tracked[S, V] | None:
        """The key's record, None when it is absent or retired."""
        rec = self.get(key)
        return rec if isinstance(rec, Tracked) else None

    def tracked(self) -> Iterator[tuple[str, Tracked[S, V]]]:
        """Every tracked record, decoded, retired markers left out (one pass)."""
        for key, value in self.raw.items():
            rec = self.codec.decode(key, value)
            if isinstance(rec, Tracked):
                yield key, rec

    def due_times(self) -> Iterator[tuple[str, int, int | None]]:
        """(key, partition, due time) of every record, bodies left undecoded; the table may
        be written between two steps of the iteration."""
        if self.lazy_scan:
            for key, value in self.raw.items():
                yield key, *self.codec.due_of(value)
            return
        for key in list(self.raw):
            value = self.raw.get(key)
            if value is not None:
                yield key, *self.codec.due_of(value)
