"""The keyed records of the feedback step's large tables: how a record is written (version,
source offsets, due time) and the index of due times that the clock ticks go through.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from itertools import islice
from typing import Any

from streams.pipeline.table_values import RecordStore, Tracked

# The due index holds what falls due within this much event time; the rest is found by a
# scan of the table before the clock gets there. It stays small however many keys are
# tracked (with RocksDB, the tables themselves are on disk).
DUE_SPAN_MS = 3_600_000
# Records the scan for the next span reads per tick: a scan of millions of records at once
# would hold the worker's event loop (and its group heartbeats) for seconds.
SCAN_CHUNK = 20_000

Heaps = dict[int, list[tuple[int, str]]]


class DueIndex:
    """Per-partition min-heaps of (due time, key) with lazy deletion, for the records due
    before ``horizon``: the record itself holds the authoritative ``due``; stale heap
    entries are skipped when popped.

    From half a span before the horizon, each tick reads ``SCAN_CHUNK`` more records of the
    table's headers (``due_times``) for those due in the next span; at the horizon the rest
    is read at once and the next span begins. After a start or a rebalance, or when the
    clock jumps past the next span too, one scan reads the whole table."""

    def __init__(self, store: RecordStore[Any, Any]) -> None:
        self._store = store
        self._heaps: Heaps | None = None
        self._horizon = 0
        self._next: Heaps = {}
        self._scan: Iterator[tuple[str, int, int | None]] | None = None

    def push(self, partition: int, due: int | None, key: str) -> None:
        if self._heaps is None or due is None:
            return
        if due < self._horizon:
            heapq.heappush(self._heaps.setdefault(partition, []), (due, key))
        elif self._scan is not None and due < self._horizon + DUE_SPAN_MS:
            self._next.setdefault(partition, []).append((due, key))

    def _read(self, until: int, limit: int | None) -> None:
        """Read up to ``limit`` (None: all) more records of the scan into ``_next``."""
        assert self._scan is not None
        for key, p, due in self._scan if limit is None else islice(self._scan, limit):
            if due is not None and due < until:
                self._next.setdefault(p, []).append((due, key))

    def _advance(self, now: int) -> None:
        if self._heaps is None or now >= self._horizon + DUE_SPAN_MS:
            # Start, rebalance, or a jump past the next span: one scan of everything.
            self._horizon = now + DUE_SPAN_MS
            self._next, self._scan = {}, self._store.due_times()
            self._read(self._horizon, None)
            self._heaps, self._next, self._scan = self._next, {}, None
            for heap in self._heaps.values():
                heapq.heapify(heap)
            return
        if self._scan is None and now >= self._horizon - DUE_SPAN_MS // 2:
            self._scan = self._store.due_times()
        if self._scan is None:
            return
        until = self._horizon + DUE_SPAN_MS
        if now < self._horizon:
            self._read(until, SCAN_CHUNK)
            return
        self._read(until, None)
        for p, entries in self._next.items():
            heap = self._heaps.setdefault(p, [])
            heap.extend(entries)
            heapq.heapify(heap)
        self._horizon, self._next, self._scan = until, {}, None

    def pop_due(self, partition: int, now: int) -> list[str]:
        self._advance(now)
        assert self._heaps is not None
        heap = self._heaps.setdefault(partition, [])
        keys: dict[str, None] = {}
        # Strictly before: at exactly the due time nothing has changed yet.
        while heap and heap[0][0] < now:
            due, key = heapq.heappop(heap)
            rec = self._store.raw.get(key)
            # A record rewritten with the same due time has two equal entries: one key once.
            if rec is not None and self._store.codec.due_of(rec)[1] == due:
                keys[key] = None
        return list(keys)

    def reset(self) -> None:
        self._heaps, self._next, self._scan = None, {}, None


def _src_with(rec: Tracked[Any, Any] | None, family: str, offset: int) -> dict[str, int]:
    src = dict(rec.src) if rec else {}
    src[family] = offset
    return src


def write_tracked(
    store: RecordStore[Any, Any],
    index: DueIndex,
    key: str,
    rec: Tracked[Any, Any] | None,
    state: Any,
    shown: Any,
    changed: bool,
    due: int | None,
    partition: int,
    offset: int,
    family: str,
    reborn_from: int = 0,
) -> int:
    """Store a keyed record (state, what was last published, version, source offsets,
    partition, due time) and index its due time; returns the version. A key reborn after
    its tombstone goes on from the version it had (``reborn_from``)."""
    version = rec.version + (1 if changed else 0) if rec else reborn_from + 1
    src = _src_with(rec, family, offset) if changed else rec.src if rec else {}
    store[key] = Tracked(state, shown, version, src, partition, due)
    index.push(partition, due, key)
    return version


def is_redelivery(rec: Tracked[Any, Any] | None, family: str, offset: int) -> bool:
    return rec is not None and offset <= rec.src.get(family, -1)
