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
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Generic, TypeVar

import msgpack
import orjson

from streams.domain.recipient.address_health import AddressState, Entry, Health
from streams.domain.recipient.message_status import ErrorFact, MessageState, MessageView

FORMAT = 1
RETIRED_FORMAT = 2
_HEADER = struct.Struct("<BHq")
NO_DUE = -(2**63)
_FORMATS = (FORMAT, RETIRED_FORMAT)
# How many records a ``RecordStore`` keeps decoded after writing them: the next event of a
# message or an address mostly comes soon after its last one, and its read is then a
# comparison of bytes instead of a decoding. Records are never changed in place (a step
# writes a new one), so the same object may be handed out again.
RECENT = 4096
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


# msgpack writes a tuple as it writes a list, so fields are read out with ``attrgetter``
# (one C call per object) and (time, id) pairs are written as they are.
_fact_fields = attrgetter("time", "event_id", "failure_type", "reason", "bounce_class", "rule")
_message_fields = attrgetter(
    "delivery_id",
    "first_seen",
    "last_seen",
    "validity_ms",
    "validity_from",
    "relayed_at",
    "delivered_at",
    "expired_at",
    "complained_at",
    "hard_sync",
    "hard_async",
    "last_error",
    "attempts",
    "last_deferral",
    "next_attempt_time",
    "errored",
)
_view_fields = attrgetter(*(f.name for f in fields(MessageView)))


def _fact(f: ErrorFact | None) -> tuple[Any, ...] | None:
    return None if f is None else _fact_fields(f)


def _unfact(v: list[Any] | None) -> ErrorFact | None:
    return None if v is None else ErrorFact(*v)


def _message_state(s: MessageState) -> list[Any]:
    a = list(_message_fields(s))
    hard_sync, hard_async, last_error = a[9:12]
    if hard_sync is not None or hard_async is not None or last_error is not None:
        a[9:12] = _fact(hard_sync), _fact(hard_async), _fact(last_error)
    return a


def _message_state_from(key: str, a: list[Any]) -> MessageState:
    s = MessageState(key, *a)
    # The nested values come back as lists.
    if a[4] is not None:
        s.validity_from = (a[4][0], a[4][1])
    if a[13] is not None:
        s.last_deferral = (a[13][0], a[13][1])
    if a[9] is not None or a[10] is not None or a[11] is not None:
        s.hard_sync, s.hard_async, s.last_error = _unfact(a[9]), _unfact(a[10]), _unfact(a[11])
    return s


def _message_view(v: MessageView) -> tuple[Any, ...]:
    return _view_fields(v)  # type: ignore[no-any-return]


def _message_view_from(a: list[Any]) -> MessageView:
    return MessageView(*a)


# -- addresses ------------------------------------------------------------------------


_health = attrgetter(*(f.name for f in fields(Health)))
_entry_fields = attrgetter(*(f.name for f in fields(Entry)))


def _address_state(s: AddressState) -> list[Any]:
    snapshot, current = s.snapshot, s.current
    # An address's snapshot often is its current health: the same tuple, packed twice.
    shown = _health(current)
    return [
        shown if snapshot is current else _health(snapshot),
        s.watermark,
        [_entry_fields(e) for e in s.entries],
        s.max_seen,
        shown,
        s.resets_at,
    ]


def _address_state_from(_key: str, a: list[Any]) -> AddressState:
    wm = a[1]
    return AddressState(
        Health(*a[0]),
        None if wm is None else (wm[0], wm[1]),
        tuple([Entry(*e) for e in a[2]]),
        a[3],
        Health(*a[4]),
        a[5],
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
        if len(raw) < _HEADER.size or raw[0] not in _FORMATS:
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
        # Key → (stored value, record) of the last RECENT writes, oldest first.
        self._recent: dict[str, tuple[Any, Tracked[S, V] | Retired]] = {}

    def _decode(self, key: str, value: Any) -> Tracked[S, V] | Retired:
        hit = self._recent.get(key)
        # Equal bytes decode to an equal record (the table may hold a new copy of them).
        if hit is not None and (hit[0] is value or hit[0] == value):
            return hit[1]
        return self.codec.decode(key, value)

    def __getitem__(self, key: str) -> Tracked[S, V] | Retired:
        return self._decode(key, self.raw[key])

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else self._decode(key, value)

    def __setitem__(self, key: str, rec: Tracked[S, V] | Retired) -> None:
        value = self.raw[key] = self.codec.encode(rec)
        recent = self._recent
        if recent.pop(key, None) is None and len(recent) >= RECENT:
            del recent[next(iter(recent))]
        recent[key] = (value, rec)

    def __delitem__(self, key: str) -> None:
        del self.raw[key]
        self._recent.pop(key, None)

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
        items: Iterable[tuple[str, Any]]
        if self.lazy_scan:
            items = self.raw.items()
        else:
            get = self.raw.get
            items = ((key, get(key)) for key in list(self.raw))
        due_of, unpack = self.codec.due_of, _HEADER.unpack_from
        for key, value in items:
            # The header of a value in a current format, read here: this runs per record.
            if type(value) is bytes and len(value) >= _HEADER.size and value[0] in _FORMATS:
                _fmt, partition, due = unpack(value)
                yield key, partition, None if due == NO_DUE else due
            elif value is not None:
                yield key, *due_of(value)
