"""Holds input partitions back while a worker drains a backlog, so that it reads them at one
pace in event time (the decision: ``streams.domain.control.input_alignment``).

A partition is held back the way Faust itself sets one aside when its buffer is full: it
leaves the consumer's set of active partitions, which the fetcher reads from, and comes
back to it later. Faust rebuilds that set at every rebalance, and pauses and resumes
partitions during a rebalance and table recovery; so nothing is changed while either is
under way, and a partition is put back only if Faust does not hold it for reasons of its
own (paused, or its buffer full).
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import TP

from streams.domain.control.input_alignment import held_back
from streams.runtime.progress import InputProgress

log = logging.getLogger(__name__)


class InputAlignment:
    def __init__(self, progress: InputProgress) -> None:
        self.progress = progress
        self.held: set[TP] = set()

    def apply(self, app: Any) -> None:
        """Hold back and put back input partitions; called every progress round."""
        consumer = app.consumer
        if app.rebalancing or app.in_recovery or not consumer.flow_active:
            return
        active = consumer._get_active_partitions()
        # What a rebalance gave back to the active set, or took away, is no longer ours.
        self.held &= set(consumer.assignment()) - active
        wanted = held_back(self.progress.positions(consumer))
        for tp in wanted - self.held:
            active.discard(tp)
        for tp in self.held - wanted:
            if tp not in consumer._paused_partitions and tp not in consumer._buffered_partitions:
                active.add(tp)
        if wanted != self.held:
            log.debug("input partitions held back: %s", sorted(map(str, wanted)))
        self.held = wanted

    def reset(self) -> None:
        self.held.clear()
