"""The pipeline's one declared topology: which topics each step reads and writes.

The worker (``streams.runtime.app``) makes one Faust agent per step, subscribed to the
step's ``reads``; ``replay`` (``streams.tools.replay``) hands each output to the step that
reads its topic, and sends the rest out. Both take the steps from here and refuse to
start when a step has no handler, and ``replay`` refuses an output on a topic its step
does not declare, so the two cannot drift apart.

    input events, clock ─► ingest ─► status, address (out)
                                  ├─► kpi-part ─► kpi ─► kpi (out)
                                  └─► signal ─► control ─► reputation, throttle (out)

Dead letters are written by whichever runner met the bad input, not by a step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from streams.pipeline.topics import INPUT_TOPICS, Topic


@dataclass(frozen=True)
class StepSpec:
    name: str
    reads: tuple[Topic, ...]
    writes: tuple[Topic, ...]
    doc: str


INGEST = StepSpec(
    "ingest",
    (*INPUT_TOPICS, Topic.CLOCK),
    (Topic.STATUS, Topic.ADDRESS, Topic.KPI_PART, Topic.SIGNAL),
    "message status, address health and KPI partials per input partition; signals",
)
KPI = StepSpec("kpi", (Topic.KPI_PART,), (Topic.KPI,), "KPI partials summed per delivery")
CONTROL = StepSpec(
    "control",
    (Topic.SIGNAL,),
    (Topic.REPUTATION, Topic.THROTTLE),
    "signals in event-time order: reputation windows and the throttle controller",
)
TOPOLOGY: tuple[StepSpec, ...] = (INGEST, KPI, CONTROL)

_READER: dict[str, StepSpec] = {topic: step for step in TOPOLOGY for topic in step.reads}


class TopologyError(RuntimeError):
    """A runner does not match the declared topology."""


def reader_of(topic: str) -> StepSpec | None:
    """The step that reads ``topic``; None for an output that leaves the pipeline."""
    return _READER.get(topic)


def check_handlers(names: Iterable[str], runner: str) -> None:
    """Every step has exactly one handler in ``runner``."""
    have, want = set(names), {step.name for step in TOPOLOGY}
    if have != want:
        missing, unknown = sorted(want - have), sorted(have - want)
        raise TopologyError(f"{runner}: steps without a handler {missing}, unknown {unknown}")


def check_output(step: StepSpec, topic: str) -> None:
    if topic not in step.writes:
        declared = ", ".join(step.writes)
        raise TopologyError(f"step {step.name!r} wrote to '{topic}', not among {declared}")
