"""CPU cost of a gap in event time in the control step, beside ticking every 10 s.

A few signals on 2026-01-01 (a rate-limited provider, a suspended IP, a throttled small
domain), then one ``--days`` later: the jump a worker makes when its first events are old,
when it comes back from a long stop, or when a replay of an old log runs into live traffic.
Both runs take the same signals through ``ControlProcessor`` and must give the same output
records; prints one JSON line.

    python benchmarks/event_time_gap.py [--days 332]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from streams.domain.control.mx_rules import load_mx_rules
from streams.domain.control.reputation import Signal
from streams.domain.control.sequencer import Due
from streams.pipeline.control import ControlProcessor
from streams.pipeline.records import Source, signal_record

T0 = 1_767_225_600_000  # 2026-01-01
DAY_MS = 86_400_000
STREAM = "retry:0"


class EveryTick(ControlProcessor):
    """The control step ticking at every 10 s of event time its watermark passes."""

    @staticmethod
    def _due(part: Any) -> Due | None:
        return None


def signals(days: int) -> list[dict[str, Any]]:
    rules = load_mx_rules()

    def signal(i: int, t: int, domain: str, reply: str, ip: str | None) -> dict[str, Any]:
        s = Signal(t, f"e{i}", domain, rules.group_for(domain), ip, "rate_limit", True, reply)
        return signal_record(s, Source(STREAM, i))

    gmail = "421 4.7.28 unusual rate of unsolicited mail - gsmtp"
    tss04 = "421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred"
    first = [
        signal(0, T0, "gmail.com", gmail, "192.0.2.10"),
        signal(1, T0 + 1_000, "yahoo.com", tss04, "192.0.2.10"),
        signal(2, T0 + 2_000, "small.example", "421 4.7.0 slow down", None),
    ]
    return [*first, signal(3, T0 + days * DAY_MS, "gmail.com", gmail, "192.0.2.10")]


def run(cls: type[ControlProcessor], records: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    control = cls({}, {}, load_mx_rules(), [STREAM])
    for rec in records:
        control.add(rec, 0)
    start = time.process_time()
    outputs = control.release(0, until=records[-1]["t"] + 1).outputs
    return time.process_time() - start, [(o.topic, o.key, o.value) for o in outputs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=332, help="length of the gap (days)")
    args = parser.parse_args()
    if not 0 <= args.days <= 3650:
        parser.error("--days must be between 0 and 3650")
    records = signals(args.days)
    skipping_s, skipping = run(ControlProcessor, records)
    every_s, every = run(EveryTick, records)
    if skipping != every:
        raise SystemExit("the two runs gave different output records")
    print(
        json.dumps(
            {
                "gap_days": args.days,
                "output_records": len(skipping),
                "cpu_s": round(skipping_s, 4),
                "every_10s_cpu_s": round(every_s, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
