"""Fuzzing the live ingest endpoints (hypothesis against a ``mta-feedback serve``
subprocess): random JSON, random bytes, mutated MTA batches, random credentials, bodies
over the limit. Every answer is 200, 401 or 413; each answer's bad records are exactly
those the adapters reject; every bad record gets exactly one dead letter; every good
record of the same batches arrives; the service keeps running and logs no traceback.

``MTA_FUZZ_EXAMPLES`` sets the examples per strategy (default 60); the counts are printed
(``pytest -s``)."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streams.adapters.base import Bad, Event, Skip
from streams.adapters.kumomta import KumoMtaConverter
from streams.adapters.sparkpost import SparkPostConverter
from streams.runtime.codec import Codec
from streams.runtime.vendor_records import to_record
from streams.service import bodies

from .mta_records import kumo_records, sparkpost_batch
from .service import INPUTS, Answer, ServiceProcess, read_topic

pytestmark = [pytest.mark.broker, pytest.mark.redis]

EXAMPLES = int(os.environ.get("MTA_FUZZ_EXAMPLES", "60"))
LIMIT = 256 * 1024
USER, PASSWORD = "spark", "fuzz-pw"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
ROUTES = {
    "/webhooks/sparkpost": (bodies.sparkpost_batch, SparkPostConverter().convert_item),
    "/publish_log_v1": (bodies.kumo_records, KumoMtaConverter().convert_record),
    "/webhooks/kumomta": (bodies.kumo_records, KumoMtaConverter().convert_record),
}
LIVE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", "2026-01-01T00:00:00Z", "1767225600", "550 5.1.1 no", "a@b.example"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=25,
)


class Oracle:
    """What the adapters and the record encoder make of a body, independently of the
    service's own bookkeeping."""

    def __init__(self, prefix: str) -> None:
        self.codec = Codec()
        self.names = {f: f"{prefix}.{f}" for f in INPUTS}

    def __call__(self, path: str, body: bytes) -> tuple[Counter[str], int, list[int]]:
        parse, convert = ROUTES[path]
        events: Counter[str] = Counter()
        skipped, bad = 0, []
        for index, element in enumerate(parse(body)):
            for result in [element] if isinstance(element, Bad) else convert(element):
                if isinstance(result, Skip):
                    skipped += 1
                    continue
                record = to_record(self.codec, result, path, index, self.names)
                if isinstance(result, Event) and record is not None and record.error is None:
                    events[result.family] += 1
                else:
                    bad.append(index)
        return events, skipped, bad


def test_fuzzing_the_ingest_endpoints(make_settings, tmp_path):
    config = make_settings()
    env = {
        "MTA_WEBHOOK_USER": USER,
        "MTA_WEBHOOK_PASSWORD": PASSWORD,
        "MTA_HTTP_MAX_BODY_BYTES": str(LIMIT),
    }
    service = ServiceProcess(config, tmp_path / "serve.log", env).start()
    oracle = Oracle(config.topic_prefix)
    tally: Counter[str] = Counter()
    arrived: Counter[str] = Counter()

    def check(path: str, body: bytes, untouched: set[int] = frozenset()) -> Answer:
        answer = service.post(path, body, headers=AUTH)
        tally["requests"] += 1
        if len(body) > LIMIT:
            assert answer.status == 413, answer
            tally["413"] += 1
            return answer
        assert answer.status == 200, (answer, body[:300])
        events, skipped, bad = oracle(path, body)
        assert answer.bad_indexes() == bad, (answer.body, body[:300])
        assert answer.body["accepted"] == sum(events.values())
        assert answer.body["skipped"] == skipped
        assert all(isinstance(b["reason"], str) and b["reason"] for b in answer.body["bad"])
        assert not untouched & set(bad), "a good record of the batch was refused"
        arrived.update(events)
        tally["records"] += sum(events.values()) + skipped + len(bad)
        tally["accepted"] += sum(events.values())
        tally["skipped"] += skipped
        tally["dead letters"] += len(bad)
        return answer

    @LIVE
    @given(path=st.sampled_from(sorted(ROUTES)), value=json_values)
    def random_json(path: str, value: Any) -> None:
        check(path, json.dumps(value).encode())

    @LIVE
    @given(path=st.sampled_from(sorted(ROUTES)), body=st.binary(max_size=4096))
    def random_bytes(path: str, body: bytes) -> None:
        check(path, body)

    tag = uuid.uuid4().hex[:8]
    bases = {
        "/webhooks/sparkpost": sparkpost_batch(30, tag),
        "/webhooks/kumomta": kumo_records(30, tag),
    }

    @LIVE
    # Found by the search once: a line truncated to nothing before a bad one.
    @example("/webhooks/kumomta", [(0, "truncate", None, 0), (2, "replace", None, 0)], True)
    @given(
        path=st.sampled_from(sorted(bases)),
        mutations=st.lists(
            st.tuples(
                st.integers(0, 29),
                st.sampled_from(["replace", "drop", "set", "truncate"]),
                json_values,
                st.integers(0, 400),
            ),
            min_size=1,
            max_size=6,
        ),
        as_lines=st.booleans(),
    )
    def mutated_batches(path: str, mutations: list, as_lines: bool) -> None:
        batch: list[Any] = json.loads(json.dumps(bases[path]))
        texts: dict[int, str] = {}
        for index, how, value, cut in mutations:
            inner = event = batch[index]
            if isinstance(event, dict) and isinstance(event.get("msys"), dict) and event["msys"]:
                inner = next(iter(event["msys"].values()))
            if how == "replace":
                batch[index] = value
            elif how == "drop" and isinstance(inner, dict) and inner:
                inner.pop(sorted(inner)[cut % len(inner)])
            elif how == "set" and isinstance(inner, dict) and inner:
                inner[sorted(inner)[cut % len(inner)]] = value
            elif how == "truncate":
                texts[index] = json.dumps(batch[index])[:cut]
        untouched = set(range(len(batch))) - {m[0] for m in mutations}
        if as_lines and path == "/webhooks/kumomta":
            lines = [texts.get(i, json.dumps(e)) for i, e in enumerate(batch)]
            # Blank lines are no records and take no index (docs/http-service.md): a line
            # truncated to nothing moves the indexes of the records after it.
            records = [i for i, line in enumerate(lines) if line.strip()]
            kept = {n for n, i in enumerate(records) if i in untouched}
            check(path, "\n".join(lines).encode(), kept)
        else:
            # A truncated element breaks a whole array: it then stands for itself only.
            for index, text in texts.items():
                check(path, text.encode())
                batch[index] = {}
            check(path, json.dumps(batch).encode(), untouched - set(texts))

    @LIVE
    # Printable values: a control character makes the request itself malformed HTTP,
    # answered 400 by the HTTP parser before any route.
    @given(
        header=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
        raw=st.binary(max_size=40),
    )
    def wrong_credentials(header: str, raw: bytes) -> None:
        for value in (header, "Basic " + base64.b64encode(raw).decode()):
            if value.strip() == AUTH["Authorization"]:
                continue
            answer = service.post("/webhooks/sparkpost", b"[]", headers={"Authorization": value})
            tally["requests"] += 1
            tally["401"] += 1
            assert answer.status == 401, answer

    random_json()
    random_bytes()
    mutated_batches()
    wrong_credentials()
    # Huge bodies: just over the limit (declared and chunked), and a large batch within.
    check("/webhooks/sparkpost", b"[" + b"0," * (LIMIT // 2) + b"0]")
    chunks = (b" " * 65536 for _ in range(LIMIT // 65536 + 1))
    assert service.post("/webhooks/kumomta", chunks, headers=AUTH).status == 413
    tally["requests"] += 1
    tally["413"] += 1
    big = json.dumps(sparkpost_batch(400, uuid.uuid4().hex[:8])).encode()
    assert len(big) < LIMIT
    check("/webhooks/sparkpost", big)

    assert service.alive()
    dead = read_topic(config, "dlq", tally["dead letters"], timeout=120, linger=3.0)
    assert len(dead) == tally["dead letters"]
    assert all(d.value["error"] for d in dead)
    for family in INPUTS:
        got = read_topic(config, family, arrived[family], timeout=120, linger=1.0)
        assert len(got) == arrived[family], family
    assert service.stop() == 0
    assert "Traceback" not in service.log_text(), service.log_text()[-3000:]
    print(f"\nHTTP ingest fuzz: {json.dumps(dict(sorted(tally.items())))}")
