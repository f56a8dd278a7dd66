"""Start, stop and kill stream worker subprocesses (``mta-feedback worker``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from streams.pipeline.topics import INPUT_TOPICS, Topic
from streams.runtime.config import Settings

_NOTABLE = re.compile(r"WARNING|ERROR|Joined group|Revoking previously|Worker ready|dead letter")
_ROUTINE = re.compile(r"Heartbeat|is overlapping")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see ``settings``."""
    from dataclasses import fields

    env = dict(os.environ)
    values = asdict(settings)
    for f in fields(Settings):
        value = values[f.name]
        env[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def table_keys(exposition: str) -> dict[str, int]:
    """Keys per table from a worker's /metrics text (``mta_table_keys{table=...}``)."""
    return {
        sample.labels["table"]: int(sample.value)
        for family in text_string_to_metric_families(exposition)
        if family.name == "mta_table_keys"
        for sample in family.samples
    }


def worker_table_keys(port: int, timeout: float = 30.0) -> dict[str, int]:
    """The key counts of the worker whose /metrics answers on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        return table_keys(reply.read().decode())


def _committed(settings: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) → the offset the workers' group committed, -1 if none (admin
    API: a consumer in that group, even one that never subscribes, could disturb it)."""
    tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
    admin = AdminClient(
        {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_client_config()}
    )
    request = ConsumerGroupTopicPartitions(settings.app_id, tps)
    result = admin.list_consumer_group_offsets([request])[settings.app_id].result(10)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}


def committed_input(settings: Settings) -> int:
    """Input offsets the workers' group committed, summed over the input partitions."""
    offsets = _committed(settings, [settings.topic(f) for f in INPUT_TOPICS])
    return sum(max(offset, 0) for offset in offsets.values())


def signals_left(settings: Settings) -> int:
    """Records of the signal topic the control step has not committed yet, as far as the
    broker's high watermarks tell (the embedded broker's can be short by a batch)."""
    topic = settings.topic(Topic.SIGNAL)
    committed = _committed(settings, [topic])
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{settings.app_id}-watermarks",  # required, never joined
            **settings.kafka_client_config(),
        }
    )
    try:
        left = 0
        for (name, partition), offset in committed.items():
            _, end = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
            left += max(0, end - max(offset, 0))
        return left
    finally:
        consumer.close()


class WorkerProcess:
    """One ``mta-feedback worker`` child (or another Faust worker ``module``) with its log
    in ``log_path``."""

    READY_MARK = "Ready"

    def __init__(
        self, settings: Settings, log_path: Path, views: bool = True, module: str | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.views = views
        self.module = module
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.module:
            argv = [sys.executable, "-m", self.module]
        else:
            argv = [sys.executable, "-m", "streams.tools.cli", "worker"]
            if not self.views:
                argv.append("--no-views")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until the worker has joined its group and started its agents.

        Polls the log, so a generous ceiling costs nothing: about 6 s from cold here, 15 s
        after a SIGKILLed member (its 6 s session timeout first), 20 s when a busy member
        must rejoin; a slow or shared machine can triple the part that is not a timeout.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            if self.READY_MARK in self.log_text():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def timeline(self, lines: int = 80) -> str:
        """The log lines that tell what happened to the worker's partitions and records
        (group joins, revocations, readiness, warnings, errors), for a failing test's
        message; routine warnings (heartbeats, overlapping timers) left out."""
        picked = [
            line
            for line in self.log_text().splitlines()
            if _NOTABLE.search(line) and not _ROUTINE.search(line)
        ]
        return f"--- {self.log_path.name}\n" + "\n".join(picked[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
