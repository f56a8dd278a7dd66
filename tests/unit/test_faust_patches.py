"""Fixes of faust-streaming in streams/runtime/faust_patches.py, checked without a broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from faust.types import TP

from streams.runtime import faust_patches

A, B, C = TP("t-changelog", 0), TP("t-changelog", 1), TP("t-changelog", 2)


class SeekRecorder:
    def __init__(self) -> None:
        self.sought: dict[TP, int] = {}

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        for offset in offsets.values():
            if not isinstance(offset, int) or offset < 0:  # as aiokafka's seek
                raise ValueError("Offset must be a positive integer")
        self.sought.update(offsets)


def test_partitions_whose_start_is_not_built_yet_are_not_sought():
    consumer = SeekRecorder()
    offsets: Counter[Any] = Counter({A: -1, B: 41})
    offsets.setdefault(C, None)  # added by a rebalance during recovery, as faust does
    asyncio.run(faust_patches._seek_offsets(None, consumer, {A, B, C}, offsets, "standby"))  # type: ignore[arg-type]
    assert consumer.sought == {A: 0, B: 41}
