"""The sweep's table: adaptive against static and oracle per size x scenario, with the
targets each cell meets. Pure functions from result rows (run summaries with ``size``) to
Markdown.

Targets, per seed; a cell meets one when every one of its seeds does:

- ``soft``: adaptive cuts soft bounces against static by at least 90% (steady) or 50%
  (other scenarios), or has at most 0.5% of the recipients;
- ``time``: adaptive is never slower than static by more than max(2%, 60 s);
- ``success``: adaptive's Success % is at least static's;
- ``oracle`` (steady only): adaptive's time to deliver within 110% of the oracle's, its soft
  bounces at most twice the oracle's;
- ``relearn`` (recurring only): adaptive's second campaign has at most 25% of the soft
  bounces of its first.

Soft bounces include full mailboxes and disabled accounts, retried whatever the limits;
``soft-throttle`` and ``relearn-throttle`` apply the same targets to the part a limit can
avoid (rate-limit deferrals and temporary blocks), each also met at 0.5% of the recipients.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MODES = ("adaptive", "static", "oracle")
Row = Mapping[str, Any]


@dataclass
class Cell:
    size: int
    scenario: str
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)  # name → one per seed
    misses: dict[str, list[int]] = field(default_factory=dict)  # target → seeds missing it
    targets: tuple[str, ...] = ()


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b


def per_seed(a: Row, s: Row, o: Row | None) -> tuple[dict[str, float], dict[str, bool]]:
    """One seed's figures and which targets it meets (adaptive ``a``, static ``s``, oracle
    ``o``; no oracle: its figures and target are left out)."""
    scenario = a["scenario"]
    figures: dict[str, float] = {}
    met: dict[str, bool] = {}
    soft_ratio = _ratio(a["soft_bounces"], s["soft_bounces"])
    if soft_ratio is not None:
        figures["soft_cut"] = 1 - soft_ratio
    floor = a["soft_bounces"] <= 0.005 * a["recipients"]
    need = 0.9 if scenario == "steady" else 0.5
    met["soft"] = floor or (soft_ratio is not None and 1 - soft_ratio >= need)
    throttle = _throttle(a), _throttle(s)
    if throttle[0] is not None and throttle[1] is not None:
        ratio = _ratio(*throttle)
        if ratio is not None:
            figures["throttle_cut"] = 1 - ratio
        low = throttle[0] <= 0.005 * a["recipients"]
        met["soft-throttle"] = low or (ratio is not None and 1 - ratio >= need)
    ta, ts = a["time_to_deliver_s"], s["time_to_deliver_s"]
    time_ratio = _ratio(ta, ts)
    if time_ratio is not None:
        figures["time_vs_static"] = time_ratio
    met["time"] = ta is not None and ts is not None and ta <= ts + max(0.02 * ts, 60)
    figures["success_delta"] = a["success_pct"] - s["success_pct"]
    met["success"] = a["success_pct"] >= s["success_pct"]
    if o is not None:
        to = _ratio(ta, o["time_to_deliver_s"])
        so = _ratio(a["soft_bounces"], o["soft_bounces"])
        if to is not None:
            figures["time_vs_oracle"] = to
        if so is not None:
            figures["soft_vs_oracle"] = so
        if scenario == "steady":
            met["oracle"] = to is not None and to <= 1.1 and so is not None and so <= 2
    campaigns = a.get("campaigns") or []
    if scenario == "recurring" and len(campaigns) > 1:
        second = _ratio(campaigns[1]["soft_bounces"], campaigns[0]["soft_bounces"])
        if second is not None:
            figures["second_vs_first"] = second
            met["relearn"] = second <= 0.25
        first_t, second_t = _throttle(campaigns[0]), _throttle(campaigns[1])
        if first_t is not None and second_t is not None:
            ratio = _ratio(second_t, first_t)
            if ratio is not None:
                figures["second_vs_first_throttle"] = ratio
            low = second_t <= 0.005 * campaigns[1]["recipients"]
            met["relearn-throttle"] = low or (ratio is not None and ratio <= 0.25)
    return figures, met


def _throttle(row: Row) -> int | None:
    """Soft bounces a limit can avoid: rate-limit deferrals and temporary blocks (None for
    a row written before blocks were counted)."""
    return None if "blocks" not in row else int(row["deferrals"]) + int(row["blocks"])


def build_cells(rows: Iterable[Row]) -> list[Cell]:
    """Cells by size then scenario (in order of appearance), seeds with all three modes."""
    by: dict[tuple[int, str, int], dict[str, Row]] = {}
    order: list[tuple[int, str]] = []
    for row in rows:
        cell = (int(row["size"]), str(row["scenario"]))
        if cell not in order:
            order.append(cell)
        by.setdefault((*cell, int(row["seed"])), {})[row["mode"]] = row
    cells = {c: Cell(*c) for c in order}
    for (size, scenario, seed), modes in sorted(by.items()):
        if "adaptive" not in modes or "static" not in modes:
            continue
        figures, met = per_seed(modes["adaptive"], modes["static"], modes.get("oracle"))
        cell = cells[(size, scenario)]
        cell.seeds.append(seed)
        for name, value in figures.items():
            cell.metrics.setdefault(name, []).append(value)
        for target, ok in met.items():
            cell.misses.setdefault(target, [])
            if not ok:
                cell.misses[target].append(seed)
    for cell in cells.values():
        cell.targets = tuple(cell.misses)
    order.sort(key=lambda c: c[0])
    return [cells[c] for c in order if cells[c].seeds]


def seed_list(seeds: Sequence[int]) -> str:
    """``100-103, 107``: consecutive runs as ranges."""
    out: list[str] = []
    run: list[int] = []
    for s in sorted(seeds):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


# (metric, column title, worst of the seeds, format)
COLUMNS: tuple[tuple[str, str, Callable[[list[float]], float], Callable[[float], str]], ...] = (
    ("soft_cut", "soft bounces cut vs static", min, lambda v: f"{v:.1%}"),
    ("throttle_cut", "deferrals + blocks cut vs static", min, lambda v: f"{v:.1%}"),
    ("time_vs_static", "time to deliver / static", max, lambda v: f"{v:.2f}x"),
    ("success_delta", "Success % delta vs static (pp)", min, lambda v: f"{v:+.2f}"),
    ("time_vs_oracle", "time to deliver / oracle", max, lambda v: f"{v:.2f}x"),
    ("soft_vs_oracle", "soft bounces / oracle", max, lambda v: f"{v:.2f}x"),
    ("second_vs_first", "2nd / 1st campaign soft bounces", max, lambda v: f"{v:.2f}x"),
    ("second_vs_first_throttle", "2nd / 1st deferrals + blocks", max, lambda v: f"{v:.2f}x"),
)


def _figure(values: list[float] | None, worst: Callable[[list[float]], float], fmt: Any) -> str:
    if not values:
        return "-"
    return f"{fmt(statistics.median(values))} ({fmt(worst(values))})"


def _targets(cell: Cell) -> tuple[str, str]:
    met = [t for t in cell.targets if not cell.misses[t]]
    missed = [
        f"{t} ({len(cell.misses[t])}/{len(cell.seeds)}: {seed_list(cell.misses[t])})"
        for t in cell.targets
        if cell.misses[t]
    ]
    return ", ".join(met) or "-", ", ".join(missed) or "-"


def markdown(rows: Iterable[Row], command: str | None = None) -> str:
    """The sweep's Markdown: one row per size x scenario, medians (worst case) over seeds."""
    cells = build_cells(rows)
    header = ["size", "scenario", "seeds", *(title for _, title, _, _ in COLUMNS)]
    header += ["targets met", "targets missed (seeds)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        figures = [_figure(cell.metrics.get(m), worst, fmt) for m, _, worst, fmt in COLUMNS]
        met, missed = _targets(cell)
        row = [f"{cell.size:,}", cell.scenario, seed_list(cell.seeds), *figures, met, missed]
        lines.append("| " + " | ".join(row) + " |")
    intro = ["# Simulation sweep: adaptive against static and oracle", ""]
    if command:
        intro += [f"Command: `{command}`", ""]
    intro += [
        "Each figure: median over the seeds, worst seed in parentheses. Time to deliver: "
        "virtual time of the last delivery (summed over a scenario's campaigns). "
        "Targets are met in a cell when every seed meets them (see docs/simulation.md).",
        "",
    ]
    return "\n".join([*intro, *lines, ""])
