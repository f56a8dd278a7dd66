"""``mta-feedback simulate --sweep``: sizes x seeds x scenarios, adaptive, static and oracle
in process; a Markdown table (``sweep_table``) and plots.

Each run's summary is appended to ``results.jsonl`` in the sweep's directory as soon as it
ends, with its ``size``; a sweep reuses the runs already there (same scenario, size, seed
and mode), so an interrupted or extended grid only runs what is missing. Delete the file
after changing the simulator or the pipeline: old results would be reused as they are.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streams.domain.control.mx_rules import load_mx_rules
from streams.sim import sweep_table
from streams.sim.control import InProcessControlPlane
from streams.sim.oracle import run_oracle
from streams.sim.runner import SimConfig, simulate
from streams.sim.worlds import SCENARIOS

DEFAULT_SIZES = (2000, 5000, 20_000, 50_000, 200_000)
DEFAULT_SEEDS = tuple(range(100, 120))
RESULTS = "results.jsonl"


def parse_ints(text: str) -> list[int]:
    """``2000,5000`` or ``100-119`` or a mix of both."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
        except ValueError:
            raise ValueError(f"not a number or range: {part!r}") from None
    if not out:
        raise ValueError(f"no numbers in {text!r}")
    return out


def parse_scenarios(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or not names:
        raise ValueError(f"unknown scenarios {unknown}: choose from {', '.join(SCENARIOS)}")
    return names


def _key(row: dict[str, Any]) -> tuple[str, int, int, str]:
    return (str(row["scenario"]), int(row["size"]), int(row["seed"]), str(row["mode"]))


def load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def one_run(scenario: str, size: int, seed: int, mode: str) -> dict[str, Any]:
    config = SimConfig(mode=mode, recipients=size, seed=seed, scenario=scenario)  # type: ignore[arg-type]
    control = InProcessControlPlane()
    rules = load_mx_rules(None)
    result = (
        run_oracle(config, control, rules) if mode == "oracle" else simulate(config, control, rules)
    )
    return {"size": size, **result.summary}


def run_sweep(
    sizes: Sequence[int],
    seeds: Sequence[int],
    scenarios: Sequence[str],
    out_dir: Path,
    command: str,
    say: Callable[[str], None],
    run: Callable[[str, int, int, str], dict[str, Any]] = one_run,
) -> Path:
    """Runs what ``results.jsonl`` lacks, then writes ``sweep.md`` and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / RESULTS
    have = {_key(r) for r in load(results)}
    grid = [
        (scenario, size, seed, mode)
        for size in sizes
        for scenario in scenarios
        for seed in seeds
        for mode in sweep_table.MODES
    ]
    todo = [k for k in grid if k not in have]
    say(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} already in {results}")
    began = time.monotonic()
    for i, (scenario, size, seed, mode) in enumerate(todo, 1):
        t = time.monotonic()
        row = run(scenario, size, seed, mode)
        with results.open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        spent = time.monotonic() - began
        left = spent / i * (len(todo) - i)
        say(
            f"[{i}/{len(todo)}] {scenario} {size} seed {seed} {mode}: "
            f"{time.monotonic() - t:.1f} s (about {left / 60:.0f} min left)"
        )
    wanted = set(grid)
    rows = [r for r in load(results) if _key(r) in wanted]
    table = out_dir / "sweep.md"
    plots = plot(rows, out_dir)
    text = sweep_table.markdown(rows, command)
    text += "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
    if not plots:
        text += "\n(plots skipped: install the `sim` extra for matplotlib)\n"
    table.write_text(text)
    return table


def plot(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Per scenario against size: soft-bounce cut vs static, and time to deliver of
    adaptive over static and over oracle (medians over the seeds)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    cells = sweep_table.build_cells(rows)
    scenarios = list(dict.fromkeys(c.scenario for c in cells))
    panels = (
        ("soft_cut", "soft bounces cut vs static"),
        ("time_vs_static", "time to deliver, adaptive / static"),
        ("time_vs_oracle", "time to deliver, adaptive / oracle"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels, strict=True):
        for scenario in scenarios:
            points = [
                (c.size, statistics.median(c.metrics[metric]))
                for c in cells
                if c.scenario == scenario and c.metrics.get(metric)
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=scenario)
        ax.set_xscale("log")
        if metric != "soft_cut":
            ax.set_yscale("log")  # ratios: 0.5x and 2x equally far from 1x
        ax.set_xlabel("recipients")
        ax.set_title(title, fontsize="medium")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    path = out_dir / "sweep.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]
