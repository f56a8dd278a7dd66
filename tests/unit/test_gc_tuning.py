"""The worker's periodic freeze: survivors leave the full passes, young garbage does not."""

from __future__ import annotations

import gc
import platform
import weakref
from collections.abc import Iterator

import pytest

from streams.runtime.gc_tuning import freeze_survivors, trim_heap


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_survivors_move_out_of_the_collected_generations():
    survivors = [[i] for i in range(1000)]  # lists stay tracked by the collector
    freeze_survivors()
    assert gc.get_freeze_count() >= len(survivors)
    assert not any(obj is survivors[0] for obj in gc.get_objects())


def test_a_dropped_cycle_is_collected_before_the_freeze():
    a, b = _Node(), _Node()
    a.peer, b.peer = b, a
    gone = weakref.ref(a)
    del a, b
    freeze_survivors()
    assert gone() is None


def test_the_c_heap_is_trimmed_where_glibc_offers_it():
    assert trim_heap() is (platform.libc_ver()[0] == "glibc")
