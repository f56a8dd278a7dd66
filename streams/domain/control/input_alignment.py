"""Input alignment: which input partitions to stop reading for a while, so that a worker
draining a backlog reads its inputs at one pace in event time.

The event-time sequencer releases a signal only once every input stream has moved past
it. A worker catching up on a backlog reads its partitions at about the same pace in
records, not in event time: a retry partition, whose few records span days, runs days
ahead of a send partition, whose many records span hours. Every signal of the partitions
ahead then waits in memory for the slowest one (hundreds of thousands of them in a large
backlog), and the worker's heap keeps that high-water mark after they are released.

So, among the partitions with a backlog (at least ``min_backlog`` records left to read),
those whose largest event time is more than ``window_ms`` ahead of the earliest are held
back: not fetched until the earliest comes within the window. Partitions without a
backlog are never held back and never hold others back: in live traffic every partition
is about caught up, and nothing changes. Holding back only changes when records are read,
never which records or their order within a partition, so what the pipeline computes is
the same.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

# Ten minutes of event time: partitions a little apart (producers' clocks, batching) are
# not held back, and what waits in the sequencer is at most about that much of the inputs.
WINDOW_MS = 600_000
# A backlog worth aligning: in live traffic a partition rarely has this many records left.
MIN_BACKLOG = 2_000


def held_back(
    inputs: Mapping[K, tuple[int | None, int]],
    window_ms: int = WINDOW_MS,
    min_backlog: int = MIN_BACKLOG,
) -> set[K]:
    """The inputs to hold back. ``inputs``: input → (largest event time handled from it,
    None before its first record; records left to read). None are held back while an input
    with a backlog has no event time yet: how far behind it is, is not known."""
    backlog = {key: time for key, (time, left) in inputs.items() if left >= min_backlog}
    times = [time for time in backlog.values() if time is not None]
    if len(times) < 2 or len(times) < len(backlog):
        return set()
    ceiling = min(times) + window_ms
    return {key for key, time in backlog.items() if time is not None and time > ceiling}
