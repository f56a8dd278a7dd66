"""``mta-feedback ingest`` against the embedded broker: events on their input topics keyed
by recipient, bad records on the dead-letter topic with their raw text and reason, and
``--follow`` across appended lines, a partial line and a rotated log, each line once."""

from __future__ import annotations

import mailbox
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from streams.adapters.base import Bad, Event, Result
from streams.adapters.registry import converter
from streams.pipeline.topics import input_key
from streams.runtime.config import Settings
from streams.serving.consumer import OutputConsumer, Record
from streams.testing.worker import settings_env

BIN = Path(sys.executable).parent
VENDORS = Path(__file__).parents[1] / "fixtures" / "vendors"
TOPICS = ("send", "bounce", "retry", "dlq")


class Topics:
    """Consumers of the input and dead-letter topics, kept open across a test."""

    def __init__(self, settings: Settings) -> None:
        self.consumers = {t: OutputConsumer(settings, t) for t in TOPICS}
        self.records: dict[str, list[Record]] = {t: [] for t in TOPICS}

    def wait_for(self, count: int, timeout: float = 60.0) -> int:
        """Read until ``count`` records in all (or the timeout), then a little longer so
        that any record beyond those expected is seen too; returns how many."""
        deadline = time.monotonic() + timeout
        while self.total() < count and time.monotonic() < deadline:
            self._read(idle=0.5)
        self._read(idle=1.5)
        return self.total()

    def _read(self, idle: float) -> None:
        for topic, consumer in self.consumers.items():
            self.records[topic] += consumer.records(idle_timeout=idle, max_wait=idle * 2)

    def total(self) -> int:
        return sum(len(r) for r in self.records.values())

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()


@pytest.fixture
def topics():
    opened: list[Topics] = []

    def make(settings: Settings) -> Topics:
        opened.append(Topics(settings))
        return opened[-1]

    yield make
    for t in opened:
        t.close()


def ingest(settings: Settings, *args: str, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "mta-feedback"), "ingest", *args],
        env=settings_env(settings),
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def reference(fmt: str, texts: list[str]) -> list[Result]:
    conv = converter(fmt)
    return [r for text in texts for r in conv.feed(text)] + conv.finish()


def events_by_family(results: list[Result]) -> dict[str, Counter[tuple[bytes, str]]]:
    out: dict[str, Counter[tuple[bytes, str]]] = {f: Counter() for f in ("send", "bounce", "retry")}
    for r in results:
        if isinstance(r, Event):
            out[r.family][(input_key(r.event["recipient"]), r.event["event_id"])] += 1
    return out


def received(t: Topics) -> dict[str, Counter[tuple[bytes, str]]]:
    return {
        f: Counter((rec.key, rec.value["event_id"]) for rec in t.records[f])
        for f in ("send", "bounce", "retry")
    }


@pytest.mark.broker
def test_a_maildir_reaches_the_input_topics_and_its_bad_message_the_dead_letters(
    make_settings, topics, tmp_path
):
    settings = make_settings()
    names = ["postfix-bounce.eml", "arf-abuse.eml", "postfix-delayed.eml", "broken-boundary.eml"]
    texts = [(VENDORS / "dsn" / n).read_bytes() for n in names]
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for text in texts:
        box.add(text)
    done = ingest(settings, "--from", "dsn", str(tmp_path / "Maildir"))
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    results = reference("dsn", [t.decode() for t in texts])
    t = topics(settings)
    assert t.wait_for(len(results)) == len(results)
    assert received(t) == events_by_family(results)
    [dead] = t.records["dlq"]
    assert dead.value["error"] == "mime: multipart/report with no parts (boundary missing or wrong)"
    assert dead.value["error_kind"] == "vendor"
    assert dead.value["value"] == texts[3]
    assert dead.value["source_topic"] == f"dsn:{tmp_path / 'Maildir'}"
    assert dead.value["source_offset"] == 4
    assert "message 4 (" in err and "1 dead letters" in err
    assert "@" not in err  # never a recipient address


def append(path: Path, data: str) -> None:
    with path.open("a") as fh:
        fh.write(data)


@pytest.mark.broker
def test_follow_takes_appended_lines_and_a_rotated_log_each_line_once(
    make_settings, topics, tmp_path
):
    settings = make_settings()
    lines = (VENDORS / "kumomta" / "records.jsonl").read_text().splitlines()
    bad_line = '{"type": "Delivery"'
    first, second, old_tail, new_file = (
        [*lines[:8], bad_line],
        lines[8:14],
        lines[14:18],
        lines[18:],
    )
    results = reference("kumomta", first + second + old_tail + new_file)

    def records_of(texts: list[str]) -> int:
        return sum(1 for r in reference("kumomta", texts) if isinstance(r, Event | Bad))

    log = tmp_path / "kumo.log"
    log.write_text("\n".join(first) + "\n")
    t = topics(settings)
    follower = ingest(settings, "--from", "kumomta", "--follow", str(log))
    try:
        assert t.wait_for(records_of(first)) == records_of(first)
        # Appended lines, the last one arriving in two writes: held until complete.
        append(log, "\n".join(second[:-1]) + "\n" + second[-1][:30])
        time.sleep(1.0)
        append(log, second[-1][30:] + "\n")
        assert t.wait_for(records_of(first + second)) == records_of(first + second)
        # Rotation: renamed, written to a little longer, then a new file.
        os.rename(log, tmp_path / "kumo.log.1")
        append(tmp_path / "kumo.log.1", "\n".join(old_tail) + "\n")
        time.sleep(0.5)
        log.write_text("\n".join(new_file) + "\n")
        got = t.wait_for(records_of(first + second + old_tail + new_file))
    finally:
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=60)
    assert got == sum(1 for r in results if isinstance(r, Event | Bad)), err
    assert follower.returncode == 0, err
    assert "stopping; flushing what was read" in err
    assert received(t) == events_by_family(results)
    [dead] = t.records["dlq"]
    assert dead.value["value"] == bad_line.encode()
    assert dead.value["error"].startswith("record: not JSON")
    assert dead.value["source_offset"] == 9


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_broker_is_said_at_once(tmp_path):
    settings = Settings(bootstrap_servers=f"127.0.0.1:{closed_port()}")
    started = time.monotonic()
    done = ingest(settings, "--from", "dsn", str(VENDORS / "dsn" / "postfix-bounce.eml"))
    _, err = done.communicate(timeout=60)
    assert done.returncode == 1
    assert "broker unreachable" in err and "MTA_BOOTSTRAP_SERVERS" in err
    assert time.monotonic() - started < 30


def test_an_input_that_cannot_be_read_exits_2():
    done = ingest(Settings(), "--from", "postfix", "--follow", "/nonexistent/mail.log")
    _, err = done.communicate(timeout=60)
    assert done.returncode == 2 and "cannot read /nonexistent/mail.log" in err
