"""Event-time sequencer: one order for signals that arrive from many input streams.

A control partition receives the signals of every input stream (one partition of an input
topic) interleaved as the workers happened to process them; a restart, a rebalance or a
second worker changes that interleaving, and a throttle controller fed in arrival order
decides differently from run to run and from ``replay``. The sequencer holds signals back
and releases them in an order that depends on the input alone:

- order: by *effective time*, then stream (in the order the streams are given: the
  pipeline lists sends before bounces before retries, so at equal times an attempt is
  counted before its outcome), then offset. A signal's effective time is the largest
  event time among it and the earlier signals of its stream in this partition, so every
  stream is released in its own offset order (a stream whose times never go backwards
  keeps its event times).
- watermark: each input stream has a *bound*, the smallest effective time it may still
  send: the effective time of its last signal here, or a larger *claim* from a progress
  record of the worker that reads it. Signals below the smallest bound over all streams
  are released; nothing earlier can come any more.
- clock ticks at every multiple of ``tick_ms`` that the watermark passes, after every
  signal before that instant and before every signal at or after it. Given ``due`` (the
  earliest event time at which a tick could change anything), the ticks before it are
  left out: they would change nothing, and a jump of months in event time then costs a
  few ticks instead of one per ``tick_ms``. The ticks that remain fall on the same
  instants, in the same place among the signals.

A claim that turns out wrong (a stream sends a signal below it: its times went backwards
across partitions, or an idle stream woke up with an old event) cannot be undone: such a
late signal is released at once, and only its order differs from a replay's.

What is stored per partition (``to_dict``) is small: the claims, and per stream the offset
and effective time of the last signal released. Held signals are not stored: the caller
keeps their input records unacknowledged, so after a crash they are read again.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

# An empty set larger than this once held a backlog: it is replaced by a new one.
_SMALL_SET_BYTES = 4096

# Released steps: ("tick", boundary ms, None) or ("signal", effective time ms, item).
Step = tuple[Literal["tick", "signal"], int, T | None]
# Given an instant, the earliest event time at or after it at which a tick could change
# anything; None when no tick can before the next signal.
Due = Callable[[int], int | None]


@dataclass
class Sequencer(Generic[T]):
    streams: Sequence[str]  # every input stream, in tie-break order
    tick_ms: int
    claims: dict[str, int] = field(default_factory=dict)
    # stream → (offset, effective time) of the last signal released
    released: dict[str, tuple[int, int]] = field(default_factory=dict)
    last_tick: int | None = None
    # stream → effective time of the last signal taken in (released or held)
    _latest: dict[str, int] = field(default_factory=dict, init=False)
    _held: list[tuple[int, int, str, int, T]] = field(default_factory=list, init=False)
    _held_keys: set[tuple[str, int]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if self.tick_ms <= 0:
            raise ValueError(f"tick_ms must be positive, got {self.tick_ms}")
        self._latest = {stream: eff for stream, (_offset, eff) in self.released.items()}
        self._rank = {stream: i for i, stream in enumerate(self.streams)}

    def add(self, stream: str, offset: int, time_ms: int, item: T) -> bool:
        """Hold a signal; False when it was released or is held already (a redelivery)."""
        done = self.released.get(stream)
        if (done is not None and offset <= done[0]) or (stream, offset) in self._held_keys:
            return False
        eff = max(time_ms, self._latest.get(stream, time_ms))
        self._latest[stream] = eff
        self._held_keys.add((stream, offset))
        rank = self._rank.get(stream, len(self._rank))  # an unknown stream: after, by name
        heapq.heappush(self._held, (eff, rank, stream, offset, item))
        return True

    def claim(self, stream: str, time_ms: int) -> None:
        """The worker reading ``stream`` promises nothing below ``time_ms`` will come."""
        self.claims[stream] = max(time_ms, self.claims.get(stream, time_ms))

    def watermark(self) -> int | None:
        """Everything below is complete; None while a stream has not been heard of."""
        slowest = self.slowest()
        return None if slowest is None or slowest[1] < 0 else slowest[1]

    def slowest(self) -> tuple[str, int] | None:
        """The stream that holds the watermark back, and its bound (-1: never heard of)."""
        bounds = ((max(self.claims.get(s, -1), self._latest.get(s, -1)), s) for s in self.streams)
        low = min(bounds, default=None)
        return None if low is None else (low[1], low[0])

    @property
    def held(self) -> int:
        return len(self._held)

    def steps(self, until: int | None = None, due: Due | None = None) -> Iterator[Step[T]]:
        """Release held signals below the watermark (or below ``until`` when given, for a
        run whose input is known to be complete) and the ticks between them, in order, one
        step at a time; with ``due``, ticks only from it on. Consume each step before
        asking for the next: ``due`` is asked again after every step, since a signal or a
        tick changes what the next tick could do."""
        limit = self.watermark() if until is None else until
        if limit is None:
            return
        held = self._held
        step = self.tick_ms
        while True:
            head = held[0][0] if held else None
            boundary = self._next_tick(due)
            if boundary is not None and boundary <= limit and (head is None or head >= boundary):
                self.last_tick = boundary
                yield ("tick", boundary, None)
                continue
            if head is None or head >= limit:
                # No tick is due up to the limit: the instants passed count as ticked, so
                # ``last_tick`` is the same whether ticks were left out or not.
                if self.last_tick is not None:
                    self.last_tick = max(self.last_tick, limit - limit % step)
                if not held and sys.getsizeof(self._held_keys) > _SMALL_SET_BYTES:
                    self._held_keys = set()  # a set keeps the size a backlog gave it
                return
            eff, _rank, stream, offset, item = heapq.heappop(held)
            self._held_keys.discard((stream, offset))
            self.released[stream] = (offset, eff)
            # Likewise up to this signal (a late one, below the last tick, changes nothing).
            floor = eff - eff % step
            self.last_tick = floor if self.last_tick is None else max(self.last_tick, floor)
            yield ("signal", eff, item)

    def _next_tick(self, due: Due | None) -> int | None:
        """The next tick's instant: the next multiple of ``tick_ms``, or the first one at
        or after ``due`` when that is later; None for no tick."""
        if self.last_tick is None:
            return None
        boundary = self.last_tick + self.tick_ms
        if due is None:
            return boundary
        at = due(boundary)
        return None if at is None else max(boundary, -(-at // self.tick_ms) * self.tick_ms)

    def position(self) -> int | None:
        """The event time up to which signals were released and ticks run; None before
        the first."""
        times = [eff for _offset, eff in self.released.values()]
        if self.last_tick is not None:
            times.append(self.last_tick)
        return max(times, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "claims": dict(self.claims),
            "released": {s: list(v) for s, v in self.released.items()},
            "tick": self.last_tick,
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, streams: Sequence[str], tick_ms: int
    ) -> Sequencer[T]:
        data = data or {}
        released = {s: (int(o), int(e)) for s, (o, e) in data.get("released", {}).items()}
        return cls(
            streams,
            tick_ms,
            claims={s: int(t) for s, t in data.get("claims", {}).items()},
            released=released,
            last_tick=data.get("tick"),
        )
