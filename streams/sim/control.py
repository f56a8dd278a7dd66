"""How the simulator talks to the pipeline: the ``ControlPlane`` protocol, and the in-process
implementation that runs the pipeline's own steps (``streams.tools.replay.Replayer``) in memory.

The loop publishes a step's events, then calls ``sync()``: when it returns, the feedback of
those events has been processed and ``throttle()`` holds the newest setting per key, as a
sender reading the control topic would see it. ``advance(now)`` moves the pipeline's
event-time clock when the simulator skips idle time, so suspensions end and healthy keys
step up even when no event arrives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from streams.pipeline.records import Output
from streams.sim.mta import Event
from streams.tools.replay import Replayer


class ControlPlane(Protocol):
    name: str
    throttle_records: int  # throttle records received so far

    def publish(self, events: Sequence[Event]) -> None: ...

    def advance(self, now_ms: int) -> None: ...

    def sync(self) -> None: ...

    def throttle(self) -> Mapping[str, Mapping[str, Any]]: ...

    def kpi(self, delivery_id: str) -> Mapping[str, Any] | None: ...

    def close(self) -> None: ...


class LatestRecords:
    """Newest record per key by ``version`` (what a reader of a compacted topic keeps)."""

    def __init__(self) -> None:
        self.throttle: dict[str, dict[str, Any]] = {}
        self.kpis: dict[str, dict[str, Any]] = {}
        self.throttle_records = 0

    def add(self, topic: str, value: dict[str, Any]) -> None:
        if topic == "throttle":
            self.throttle_records += 1
            book, key = self.throttle, value["key"]
        elif topic == "kpi":
            book, key = self.kpis, value["delivery_id"]
        else:
            return
        old = book.get(key)
        if old is None or value["version"] >= old["version"]:
            book[key] = value


class InProcessControlPlane:
    """The pipeline's steps in this process: fast, deterministic, no broker."""

    name = "in-process"

    def __init__(self, replayer: Replayer | None = None) -> None:
        self.replayer = replayer or Replayer()
        self._latest = LatestRecords()

    @property
    def throttle_records(self) -> int:
        return self._latest.throttle_records

    def _take(self, outputs: list[Output]) -> None:
        for out in outputs:
            self._latest.add(out.topic, out.value)

    def publish(self, events: Sequence[Event]) -> None:
        for family, event in events:
            self._take(self.replayer.apply(family, event))

    def advance(self, now_ms: int) -> None:
        self._take(self.replayer.advance(now_ms))

    def sync(self) -> None:
        """The step's events are all in: the control step takes in their signals."""
        self._take(self.replayer.settle())

    def throttle(self) -> Mapping[str, Mapping[str, Any]]:
        return self._latest.throttle

    def kpi(self, delivery_id: str) -> Mapping[str, Any] | None:
        return self._latest.kpis.get(delivery_id)

    def close(self) -> None:
        """Nothing to release."""


class NoPipeline:
    """Drops the events: for runs whose limits read no feedback (the oracle's search), where
    the pipeline would only cost time."""

    name = "none"
    throttle_records = 0

    def publish(self, events: Sequence[Event]) -> None:
        """Nothing reads them."""

    def advance(self, now_ms: int) -> None:
        """No clock to move."""

    def sync(self) -> None:
        """Nothing to wait for."""

    def throttle(self) -> Mapping[str, Mapping[str, Any]]:
        return {}

    def kpi(self, delivery_id: str) -> Mapping[str, Any] | None:
        return None

    def close(self) -> None:
        """Nothing to release."""
