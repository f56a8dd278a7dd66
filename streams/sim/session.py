"""A pipeline to simulate against: the configured one if a worker serves it, else the
embedded stack and a worker of our own on fresh topics; stops only what it started."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from streams.pipeline.topics import Topic
from streams.runtime.config import Settings
from streams.testing.worker import WorkerProcess
from streams.tools.stack import Stack, answers, broker_address

SIM_COMMIT_INTERVAL_S = 0.1


def worker_running(settings: Settings, probe_s: float = 2.5) -> bool:
    """True when a worker serves the topics of ``settings``: its clock ticks keep arriving
    (a worker sends one a second once it has seen an event). Group membership would be
    the direct test, but Tansu describes every known group as stable with no members."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    if not answers(*broker_address(settings)):
        return False
    probe = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{settings.app_id}-probe",
            **settings.kafka_client_config(),
        }
    )
    clock = TopicPartition(settings.topic(Topic.CLOCK), 0)
    try:
        before = probe.get_watermark_offsets(clock, timeout=5)[1]
        time.sleep(probe_s)
        return probe.get_watermark_offsets(clock, timeout=5)[1] > before
    except KafkaException:  # no such topic: nothing serves it
        return False
    finally:
        probe.close()


@contextmanager
def pipeline(base: Settings, label: str, say: Callable[[str], None] = print) -> Iterator[Settings]:
    """Yield settings whose topics a running worker serves."""
    stack = Stack(base)
    before = stack.status()
    if worker_running(base):
        say(f"using the running worker of {base.app_id} (topics {base.topic_prefix}.*)")
        yield base
        return
    stack.up()
    prefix = f"{label}{int(time.time())}"
    # Each simulation step waits for the worker's commits (KafkaControlPlane.sync), so
    # the commit cadence sets the pace of the closed loop, not the worker's throughput.
    settings = dataclasses.replace(
        base, topic_prefix=prefix, app_id=prefix, commit_interval_s=SIM_COMMIT_INTERVAL_S
    )
    Stack(settings).create_topics()
    worker = WorkerProcess(settings, Path(settings.run_dir) / f"{prefix}-worker.log", views=False)
    try:
        say(f"starting a worker on fresh topics {prefix}.* ...")
        worker.start().wait_ready()
        yield settings
    finally:
        worker.stop()
        started_here = [s.name for s in before if not s.answering]
        # Stop only what this run started: not a service that answered before, nor one
        # an earlier `stack up` owns.
        if started_here and not any(s.pid for s in before):
            stack.down()
            say(f"stopped {', '.join(started_here)}")
