"""``mta-feedback simulate``: the closed loop against the real broker and worker (or in
process with ``--in-process``); prints a JSON summary per run, optionally writes a report.

``--mode both`` runs adaptive then static on the same seed and reports the comparison.
Against the broker, each run gets its own worker and fresh topics unless a worker already
serves the configured topics (then its controller state carries over between runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from streams.sim.runner import Progress, SimConfig, SimResult, simulate
from streams.tools.progress import Bar, progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["adaptive", "static", "both"], default="adaptive")
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", metavar="DIR", help="write report.md, summary.json, PNGs")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the pipeline's steps in this process instead of the broker and a worker",
    )


def _follow(bar: Bar) -> Callable[[Progress], None] | None:
    """Moves ``bar`` by messages that reached a final status, noting the virtual time."""
    if not bar.shown:
        return None

    def on_step(p: Progress) -> None:
        elapsed_min = (p.t_ms - p.start_ms) // 60_000
        day, minute = divmod(elapsed_min, 24 * 60)
        note = f"virtual time day {day} {minute // 60:02d}:{minute % 60:02d}"
        bar.update(p.recipients - p.pending, total=p.recipients, note=note)

    return on_step


def _one(config: SimConfig, in_process: bool) -> SimResult:
    total = config.spec().recipients
    with progress_bar(f"simulate {config.mode}", total, unit="messages final") as bar:
        return _run(config, in_process, _follow(bar))


def _run(
    config: SimConfig, in_process: bool, on_step: Callable[[Progress], None] | None
) -> SimResult:
    if in_process:
        from streams.sim.control import InProcessControlPlane

        return simulate(config, InProcessControlPlane(), on_step=on_step)
    from streams.runtime.config import Settings
    from streams.sim.kafka_control import KafkaControlPlane
    from streams.sim.session import pipeline

    def say(text: str) -> None:
        print(f"mta-feedback simulate: {text}", file=sys.stderr)

    label = f"sim-{config.mode}-{config.seed}-"
    with pipeline(Settings.from_env(), label, say) as settings:
        control = KafkaControlPlane(settings)
        try:
            return simulate(config, control, on_step=on_step)
        finally:
            control.close()


def run(args: argparse.Namespace) -> int:
    if args.recipients < 1:
        print("mta-feedback simulate: --recipients must be at least 1", file=sys.stderr)
        return 2
    modes = ["adaptive", "static"] if args.mode == "both" else [args.mode]
    results = []
    for mode in modes:
        config = SimConfig(mode=mode, recipients=args.recipients, seed=args.seed)  # type: ignore[arg-type]
        result = _one(config, args.in_process)
        results.append(result)
        print(json.dumps(result.summary, sort_keys=True), flush=True)
    if args.report:
        from streams.sim import report

        path = report.write(results, Path(args.report))
        print(f"mta-feedback simulate: report in {path}", file=sys.stderr)
    return 0
