"""``mta-feedback simulate``: the closed loop against the real broker and worker (or in
process with ``--in-process``); prints a JSON summary per run, optionally writes a report.

``--mode both`` runs adaptive then static on the same seed and reports the comparison;
``--mode all`` adds the oracle (``oracle``: fixed limits tuned in hindsight for the world).
``--scenario`` picks the world (``worlds``); ``--sweep`` runs a grid in process (``sweep``).
Against the broker, each run gets its own worker and fresh topics unless a worker already
serves the configured topics (then its controller state carries over between runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from streams.sim.control import ControlPlane
from streams.sim.runner import Progress, SimConfig, SimResult, simulate
from streams.sim.worlds import SCENARIOS
from streams.tools.progress import Bar, progress_bar

MODES = {
    "adaptive": ["adaptive"],
    "static": ["static"],
    "oracle": ["oracle"],
    "both": ["adaptive", "static"],
    "all": ["adaptive", "static", "oracle"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=list(MODES), default="adaptive")
    parser.add_argument("--scenario", choices=SCENARIOS, default="steady")
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", metavar="DIR", help="write report.md, summary.json, PNGs")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the pipeline's steps in this process instead of the broker and a worker",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="run sizes x seeds x scenarios in process; write a Markdown table and plots",
    )
    parser.add_argument("--sizes", default="2000,5000,20000,50000,200000", help="with --sweep")
    parser.add_argument("--seeds", default="100-119", help="with --sweep: 100-119 or 1,5,7")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="with --sweep")
    parser.add_argument(
        "--sweep-dir",
        default="sim-sweep",
        metavar="DIR",
        help="with --sweep: results.jsonl (reused by later sweeps), sweep.md, sweep.png",
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

        return _mode(config, InProcessControlPlane(), on_step)
    from streams.runtime.config import Settings
    from streams.sim.kafka_control import KafkaControlPlane
    from streams.sim.session import pipeline

    def say(text: str) -> None:
        print(f"mta-feedback simulate: {text}", file=sys.stderr)

    label = f"sim-{config.mode}-{config.seed}-"
    with pipeline(Settings.from_env(), label, say) as settings:
        control = KafkaControlPlane(settings)
        try:
            return _mode(config, control, on_step)
        finally:
            control.close()


def _mode(
    config: SimConfig, control: ControlPlane, on_step: Callable[[Progress], None] | None
) -> SimResult:
    if config.mode == "oracle":
        from streams.sim.oracle import run_oracle

        # The search runs in process; only the run of the limits it found uses ``control``.
        print(
            "mta-feedback simulate: oracle: searching the world's best fixed limits in process",
            file=sys.stderr,
            flush=True,
        )
        return run_oracle(config, control, on_step=on_step)
    return simulate(config, control, on_step=on_step)


def _sweep(args: argparse.Namespace) -> int:
    from streams.sim import sweep

    def say(text: str) -> None:
        print(f"mta-feedback simulate --sweep: {text}", file=sys.stderr, flush=True)

    try:
        sizes = sweep.parse_ints(args.sizes)
        seeds = sweep.parse_ints(args.seeds)
        scenarios = sweep.parse_scenarios(args.scenarios)
    except ValueError as exc:
        say(str(exc))
        return 2
    if min(sizes) < 1:
        say("--sizes must be at least 1")
        return 2
    command = (
        f"mta-feedback simulate --sweep --sizes {args.sizes} --seeds {args.seeds} "
        f"--scenarios {args.scenarios}"
    )
    path = sweep.run_sweep(sizes, seeds, scenarios, Path(args.sweep_dir), command, say)
    print(path.read_text(), end="")
    say(f"table in {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.sweep:
        return _sweep(args)
    if args.recipients < 1:
        print("mta-feedback simulate: --recipients must be at least 1", file=sys.stderr)
        return 2
    results = []
    for mode in MODES[args.mode]:
        config = SimConfig(
            mode=mode,  # type: ignore[arg-type]
            recipients=args.recipients,
            seed=args.seed,
            scenario=args.scenario,
        )
        result = _one(config, args.in_process)
        results.append(result)
        print(json.dumps(result.summary, sort_keys=True), flush=True)
    if args.report:
        from streams.sim import report

        path = report.write(results, Path(args.report))
        print(f"mta-feedback simulate: report in {path}", file=sys.stderr)
    return 0
