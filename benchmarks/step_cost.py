"""The pipeline's own steps per event, in process (no Kafka), beside a decode-only loop.

    python benchmarks/step_cost.py [--events 100000] [--seed 1]

The events are the bench's campaigns (streams/testing/sample.py), Avro-encoded as the
producers write them. Their replies are redrawn from the provider templates of
``qualify_speed.py`` with fresh ids, IPs and users, keeping each reply's class (a
deferral gets a 4xx or a code-less connection error, a bounce a 5xx), so that the
qualifier's cache sees a realistic hit rate rather than a handful of repeated lines.

Two loops over the same encoded events, one JSON line:

- decode: Avro decoding alone (what any consumer pays);
- steps: decoding, validation, the feedback step (status, address, KPI partial,
  signal), the KPI and control steps (reputation, throttle; the control step takes the
  held signals in at the end, as ``replay`` does), and the encoding of every output.

Each loop is timed by the wall clock (``*_us_per_event``) and by this process's CPU time
(``*_cpu_us_per_event``), which other processes on a shared machine move less.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from qualify_speed import TEMPLATES

from streams.domain.bounce.rules import parse_reply
from streams.pipeline.feedback import LateEvent
from streams.pipeline.records import Output
from streams.pipeline.topics import SCHEMA_FILES
from streams.runtime.checkpoint import json_bytes
from streams.runtime.codec import Codec
from streams.runtime.validate import validate_event
from streams.testing.sample import SampleCampaign
from streams.tools.replay import Replayer

_CODELESS = [t for t in TEMPLATES if parse_reply(t)[0] is None]


def _reply(rng: random.Random, code_class: str) -> str:
    """A template reply of the class ('4', '5' or '' for code-less), filled in."""
    pool = [t for t in TEMPLATES if t.startswith(code_class)] if code_class else _CODELESS
    return rng.choice(pool).format(
        id=f"{rng.getrandbits(48):x}",
        ip=f"192.0.2.{rng.randint(1, 254)}",
        user=f"user{rng.randint(1, 5000)}",
        n=rng.randint(1, 50),
    )


def events(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """At least ``n`` campaign events with varied replies, in event-time order per campaign."""
    rng = random.Random(seed)
    start = int(time.time() * 1000) - 5 * 86_400_000
    out: list[tuple[str, dict[str, Any]]] = []
    batch = 0
    while len(out) < n:
        campaign = SampleCampaign(10_000, seed + batch, start, f"S{batch}")
        for family, event in campaign.events():
            if event.get("diagnostic"):
                code = event.get("smtp_code")
                cls = str(code)[0] if code else ""
                text = _reply(rng, "" if cls == "4" and rng.random() < 0.2 else cls)
                parsed, status = parse_reply(text)
                dotted = ".".join(map(str, status)) if status else None
                event.update(diagnostic=text, smtp_code=parsed, enhanced_status=dotted)
            out.append((family, event))
        batch += 1
    return out[:n]


def _encode(codec: Codec, outputs: list[Output]) -> None:
    for out in outputs:
        if out.value is None:
            continue
        if out.topic in SCHEMA_FILES:
            codec.encode(out.topic, out.value, out.topic)
        else:
            json_bytes(out.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.events < 1000:
        parser.error("--events must be at least 1000")
    codec = Codec()
    mix = events(args.events, args.seed)
    replies = {event["diagnostic"] for _, event in mix if event.get("diagnostic")}
    encoded = [(family, codec.encode(family, event)) for family, event in mix]
    print(f"{len(encoded)} events encoded", file=sys.stderr)

    started, cpu = time.perf_counter(), time.process_time()
    for family, raw in encoded:
        codec.decode(family, raw)
    decode_s, decode_cpu = time.perf_counter() - started, time.process_time() - cpu

    replayer = Replayer(codec=codec)
    late = 0
    started, cpu = time.perf_counter(), time.process_time()
    for family, raw in encoded:
        event = codec.decode(family, raw)
        validate_event(family, event)
        try:
            _encode(codec, replayer.apply(family, event))
        except LateEvent:  # a worker dead-letters it
            late += 1
    _encode(codec, replayer.settle())
    steps_s, steps_cpu = time.perf_counter() - started, time.process_time() - cpu

    cache = replayer.feedback.qualifier._decide.cache_info()  # type: ignore[attr-defined]
    n = len(encoded)
    print(
        json.dumps(
            {
                "events": n,
                "decode_us_per_event": round(decode_s / n * 1e6, 1),
                "steps_us_per_event": round(steps_s / n * 1e6, 1),
                "steps_over_decode": round(steps_s / decode_s, 2),
                # CPU time of this process: on a shared machine, less moved by the others.
                "decode_cpu_us_per_event": round(decode_cpu / n * 1e6, 1),
                "steps_cpu_us_per_event": round(steps_cpu / n * 1e6, 1),
                "distinct_replies": len(replies),
                "qualifier_cache_hit_pct": round(
                    100 * cache.hits / max(1, cache.hits + cache.misses), 1
                ),
                "late_events": late,
            }
        )
    )


if __name__ == "__main__":
    main()
