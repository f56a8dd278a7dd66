"""Hostile input, bounded and seeded, interleaved with good records, through a real worker.

Each bad record must give exactly one dead letter with a reason, every good record must be
processed (a status record), and the worker must never restart (same pid, no Traceback).
The counts per category and dead-letter kind are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import copy
import io
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer
from factories import event

from streams.runtime.codec import SINGLE_OBJECT_MAGIC, Codec, load_schema_json
from streams.runtime.config import Settings
from streams.serving.consumer import OutputConsumer
from streams.testing.services import long_run
from streams.testing.worker import WorkerProcess

from .helpers import collect

pytestmark = [pytest.mark.broker, pytest.mark.redis, pytest.mark.e2e]

BAD_PER_CATEGORY = 60 if long_run() else 12
NOW_MS = int(time.time() * 1000)


@dataclass(frozen=True)
class Record:
    category: str  # "good" or the kind of hostility
    family: str  # topic it is sent to
    key: bytes | None
    value: bytes
    recipient: str | None  # the address it carries, to look for in the worker log
    message_id: str | None = None  # good records only


def _avro(schema: dict[str, Any], record: dict[str, Any], header: bytes) -> bytes:
    buf = io.BytesIO()
    buf.write(header)
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.codec = Codec()
        self.n = 0

    def _id(self, tag: str) -> str:
        self.n += 1
        return f"{tag}{self.n:06d}"

    def _base(self, **extra: Any) -> dict[str, Any]:
        mid = self._id("F")
        return event(mid, "relayed", self.rng.randrange(10**6), **extra)

    def good(self) -> Record:
        recipient = self.rng.choice(
            [
                None,
                "josé.álvarez@exämple.org",  # SMTPUTF8 local part and IDN domain
                "用户@例え.jp",
                "user@🎉.example",  # emoji domain (IDNA 2003 style)
                "o'brien+tag@sub.example.co.uk",
            ]
        )
        ev = self._base()
        if recipient:
            ev["recipient"] = f"{ev['message_id'].lower()}.{recipient}"
        value = self.codec.encode("send", ev)
        return Record(
            "good", "send", ev["recipient"].encode(), value, ev["recipient"], ev["message_id"]
        )

    def random_bytes(self) -> Record:
        value = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 300)))
        return Record(
            "random_bytes", self.rng.choice(["send", "bounce", "retry"]), b"k", value, None
        )

    def truncated(self) -> Record:
        ev = self._base()
        good = self.codec.encode("send", ev)
        return Record(
            "truncated", "send", b"k", good[: self.rng.randrange(1, len(good))], ev["recipient"]
        )

    def unknown_fingerprint(self) -> Record:
        ev = self._base()
        body = self.codec.encode("send", ev)[10:]
        value = SINGLE_OBJECT_MAGIC + self.rng.randbytes(8) + body
        return Record("unknown_fingerprint", "send", b"k", value, ev["recipient"])

    def altered_schema(self) -> Record:
        """Fields missing or of the wrong type, written with our SendEvent header (a lie)."""
        schema = copy.deepcopy(load_schema_json("send"))
        ev = self._base()
        fields = schema["fields"]
        victim = self.rng.choice(["event_time", "recipient", "message_id", "kind", "event_id"])
        index = next(i for i, f in enumerate(fields) if f["name"] == victim)
        if self.rng.random() < 0.5:
            del fields[index]
            ev.pop(victim)
        else:
            wrong: dict[str, tuple[Any, Any]] = {
                "event_time": ("string", "yesterday"),
                "recipient": ("long", 42),
                "message_id": ("double", 1.5),
                "kind": ("string", "bounced-twice"),
                "event_id": ({"type": "array", "items": "long"}, [1, 2, 3]),
            }
            fields[index]["type"], ev[victim] = wrong[victim]
        value = _avro(schema, ev, self.codec.header("send"))
        return Record(f"altered_{victim}", "send", b"k", value, None)

    def invalid_utf8(self) -> Record:
        """A string field holding bytes that are not UTF-8 (surrogates encoded, 0xff)."""
        ev = self._base()
        bad = self.rng.choice(["\udcff".encode("utf-8", "surrogatepass"), b"\xff\xfe", b"\xc0\x80"])
        marker = "RCPT-PLACEHOLDER@example.org"
        ev["recipient"] = marker
        good = self.codec.encode("send", ev)
        raw = marker.encode()
        value = good.replace(
            bytes([len(raw) * 2]) + raw, bytes([(len(raw) + len(bad)) * 2]) + raw + bad
        )
        return Record("invalid_utf8", "send", b"k", value, marker)

    def huge_diagnostic(self) -> Record:
        size = self.rng.randrange(100_000, 1_000_000)
        ev = self._base(smtp_code=550, diagnostic="5.1.1 " + "x" * size)
        ev["kind"] = "sync"
        return Record("huge_diagnostic", "bounce", b"k", self.codec.encode("bounce", ev), None)

    def bad_address(self) -> Record:
        local = self._id("a")
        recipient = self.rng.choice(
            [
                "",
                local,
                f"@{local}.example.org",
                f"{local}@",
                f"{local}@localhost",
                f"{local} x@example.org",
                f"<{local}@example.org>",
                f"{local}\n@example.org",
                f"{local}\x00@example.org",
                f"{local}@" + "d" * 400 + ".org",
                local + "l" * 10_000 + "@example.org",
                f"{local}\u202e@example.org",  # right-to-left override
                f"{local}\u200b@example.org",  # zero-width space
                f"{local}@exa\ufeffmple.org",  # BOM inside the domain
            ]
        )
        ev = self._base()
        ev["recipient"] = recipient
        value = self.codec.encode("send", ev)
        return Record("bad_address", "send", recipient.encode()[:300], value, recipient or None)

    def bad_time(self) -> Record:
        ev = self._base()
        ev["event_time"] = self.rng.choice(
            [0, -1, -(2**62), 2**62, NOW_MS + 30 * 86_400_000, 946_684_799_999]
        )
        return Record("bad_time", "send", b"k", self.codec.encode("send", ev), ev["recipient"])

    def bad_validity(self) -> Record:
        ev = self._base(validity_seconds=self.rng.choice([-1, 0, -(2**31), 2**31 - 1, 40_000_000]))
        return Record("bad_validity", "send", b"k", self.codec.encode("send", ev), ev["recipient"])

    def bad_retry(self) -> Record:
        ev = event(self._id("R"), "deferred", 0, attempt=-5, next_attempt_time=2**62)
        return Record("bad_retry", "retry", b"k", self.codec.encode("retry", ev), ev["recipient"])

    def wrong_topic(self) -> Record:
        ev = event(self._id("W"), "sync", 0, smtp_code=550)
        return Record("wrong_topic", "send", b"k", self.codec.encode("bounce", ev), ev["recipient"])

    def empty(self) -> Record:
        return Record("empty", "send", None, b"", None)

    def stream(self) -> list[Record]:
        makers: list[Callable[[], Record]] = [
            self.random_bytes,
            self.truncated,
            self.unknown_fingerprint,
            self.altered_schema,
            self.invalid_utf8,
            self.huge_diagnostic,
            self.bad_address,
            self.bad_time,
            self.bad_validity,
            self.bad_retry,
            self.wrong_topic,
            self.empty,
        ]
        records = [make() for make in makers for _ in range(BAD_PER_CATEGORY)]
        records += [self.good() for _ in range(len(records))]
        self.rng.shuffle(records)
        return records


def _dead_letters(settings: Settings, count: int, timeout: float = 120.0) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    with OutputConsumer(settings, "dlq") as consumer:
        while time.monotonic() < deadline and len(out) < count:
            out.extend(r.value for r in consumer.records(idle_timeout=1.0, max_wait=3.0))
        # A little longer: a second dead letter for the same record would show up here.
        out.extend(r.value for r in consumer.records(idle_timeout=3.0, max_wait=10.0))
    return out


def _produce(settings: Settings, records: list[Record]) -> dict[tuple[str, int, int], int]:
    """Produce every record; where each landed (topic, partition, offset) → its index."""
    sources: dict[tuple[str, int, int], int] = {}
    failures: list[str] = []

    def landed(index: int) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                sources[(msg.topic(), msg.partition(), msg.offset())] = index

        return done

    # The broker's limit is the producer's to respect; 1 MB diagnostics need a bit more.
    producer = Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "message.max.bytes": 2_000_000,
            **settings.kafka_client_config(),
        }
    )
    for i, r in enumerate(records):
        producer.produce(settings.topic(r.family), r.value, r.key, on_delivery=landed(i))
        producer.poll(0)
    assert producer.flush(60) == 0, "records left undelivered"
    assert failures == []
    assert len(sources) == len(records)
    return sources


def test_hostile_input_is_dead_lettered_once_and_good_input_goes_through(make_settings, tmp_path):
    settings = make_settings()
    records = Fuzzer(seed=20260101).stream()
    bad = [r for r in records if r.category != "good"]
    good = [r for r in records if r.category == "good"]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        assert worker.proc is not None
        pid = worker.proc.pid
        sources = _produce(settings, records)
        dead = _dead_letters(settings, len(bad))
        latest = collect(
            settings,
            "status",
            lambda got: all(r.message_id in got for r in good),
            "message_id",
            timeout=120,
        )
        log = worker.log_text()
        assert worker.alive() and worker.proc.pid == pid
    finally:
        worker.stop()

    # Two hostile records can be the same bytes (a truncation of the same header): a
    # dead letter is matched to its input by where it was read from, never by value.
    by_source: dict[int, list[dict]] = {}
    for d in dead:
        index = sources.get((d["source_topic"], d["source_partition"], d["source_offset"]))
        assert index is not None, f"a dead letter of no record we produced: {d['error']}"
        by_source.setdefault(index, []).append(d)
    kinds: Counter[tuple[str, str]] = Counter()
    missing, doubled = [], []
    for i, r in enumerate(records):
        if r.category == "good":
            assert i not in by_source, f"a good record was dead-lettered: {by_source[i]}"
            continue
        letters = by_source.get(i, [])
        if not letters:
            missing.append(r.category)
        elif len(letters) > 1:
            doubled.append(r.category)
        for d in letters[:1]:
            kinds[(r.category, d["error_kind"])] += 1
            assert d["error"], f"dead letter without a reason for {r.category}"
    print("\ndead letters per (category, kind):")
    for (category, kind), n in sorted(kinds.items()):
        print(f"  {category:24} {kind:16} {n}")
    assert missing == [], f"bad records without a dead letter: {Counter(missing)}"
    assert doubled == [], f"bad records dead-lettered twice: {Counter(doubled)}"
    assert len(dead) == len(bad)
    assert all(latest[r.message_id]["status"] == "taken_into_account" for r in good)
    assert len(good) == len({r.message_id for r in good})
    assert "Traceback" not in log
    assert not any(kind == "processing" for _, kind in kinds), "a bad record reached a bug"
    # No recipient of any record, good or hostile, appears in the worker log.
    leaked = [
        r.recipient for r in records if r.recipient and len(r.recipient) > 3 and r.recipient in log
    ]
    assert leaked == []
