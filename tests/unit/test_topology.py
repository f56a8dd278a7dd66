"""The declared topology is whole, and both runners hold to it."""

from __future__ import annotations

import pytest

from streams.pipeline.records import Output
from streams.pipeline.topics import INPUT_TOPICS, SCHEMA_FILES, TOPICS, Topic
from streams.pipeline.topology import (
    INGEST,
    TOPOLOGY,
    TopologyError,
    check_handlers,
    reader_of,
)
from streams.runtime.codec import schema_dir
from streams.testing.sample import SampleCampaign
from streams.tools.replay import Replayer

EVENTS = SampleCampaign(recipients=20, seed=5).events()


def test_every_topic_is_declared_once_and_every_avro_topic_has_its_schema():
    names = [spec.name for spec in TOPICS]
    assert sorted(names) == sorted(Topic) and len(set(names)) == len(names)
    for stem in SCHEMA_FILES.values():
        assert (schema_dir() / f"{stem}.avsc").is_file(), stem


def test_steps_read_and_write_declared_topics_and_internal_topics_have_one_reader():
    internal = {spec.name for spec in TOPICS if spec.schema is None}
    for step in TOPOLOGY:
        assert set(step.reads) | set(step.writes) <= set(Topic)
    readers = [topic for step in TOPOLOGY for topic in step.reads]
    assert len(readers) == len(set(readers)), "a topic read by two steps"
    assert internal <= set(readers), "an internal topic nobody reads"
    assert INGEST.reads == (*INPUT_TOPICS, Topic.CLOCK)
    assert reader_of(Topic.STATUS) is None and reader_of(Topic.SIGNAL) is not None


def test_a_runner_without_a_handler_for_a_step_refuses_to_start():
    with pytest.raises(TopologyError, match="worker: steps without a handler \\['kpi'\\]"):
        check_handlers(["ingest", "control"], "worker")
    with pytest.raises(TopologyError, match="unknown \\['extra'\\]"):
        check_handlers([step.name for step in TOPOLOGY] + ["extra"], "replay")


def test_replay_refuses_an_output_its_step_does_not_declare():
    replayer = Replayer()
    stray = Output(Topic.THROTTLE, "group:google", {})
    replayer.feedback.process = lambda *_args: [stray]  # type: ignore[method-assign]
    with pytest.raises(TopologyError, match="step 'ingest' wrote to 'throttle'"):
        replayer.apply(*EVENTS[0])


def test_replay_routes_internal_records_to_their_step_and_the_rest_out():
    replayer = Replayer()
    out = [o for family, event in EVENTS for o in replayer.apply(family, event)]
    out += replayer.settle()
    topics = {o.topic for o in out}
    assert {Topic.STATUS, Topic.ADDRESS, Topic.KPI, Topic.REPUTATION} <= topics
    assert not topics & {Topic.KPI_PART, Topic.SIGNAL}
