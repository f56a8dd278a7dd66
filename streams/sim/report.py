"""Simulation reports: a Markdown table (and a per-provider breakdown) plus PNG plots.

Plots need matplotlib (the ``sim`` extra); without it the Markdown says they were skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streams.sim.mta import ATTEMPTS, DEFERRALS, DELIVERED, HARD, SOFT
from streams.sim.runner import PLOTTED_GROUPS, SimResult

BIN_MIN = 10  # plot resolution in virtual minutes
COLUMNS = (
    ("mode", "mode"),
    ("seed", "seed"),
    ("recipients", "recipients"),
    ("sent", "sent"),
    ("failed", "failed"),
    ("soft_bounces", "soft bounces"),
    ("deferrals", "rate-limit deferrals"),
    ("hard_bounces", "hard bounces"),
    ("time_to_deliver_s", "time to deliver (virtual s)"),
    ("success_pct", "success %"),
    ("control_plane", "control plane"),
    ("wall_s", "wall s"),
)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def summary_table(results: Sequence[SimResult]) -> list[str]:
    return _table(
        [[r.summary[k] for k, _ in COLUMNS] for r in results], [title for _, title in COLUMNS]
    )


def comparison_table(results: Sequence[SimResult]) -> list[str]:
    """Adaptive against static for each seed that has both."""
    by = {(r.summary["seed"], r.summary["mode"]): r.summary for r in results}
    rows = []
    for seed in sorted({s for s, _ in by}):
        a, s = by.get((seed, "adaptive")), by.get((seed, "static"))
        if a is None or s is None:
            continue
        soft_cut = 1 - a["soft_bounces"] / s["soft_bounces"] if s["soft_bounces"] else 0.0
        speedup = s["time_to_deliver_s"] / a["time_to_deliver_s"] if a["time_to_deliver_s"] else 0.0
        rows.append(
            [
                seed,
                a["recipients"],
                f"{s['soft_bounces']} → {a['soft_bounces']}",
                f"{soft_cut:.1%}",
                f"{s['deferrals']} → {a['deferrals']}",
                f"{s['time_to_deliver_s']} → {a['time_to_deliver_s']}",
                f"{speedup:.2f}x",
                f"{s['success_pct']} → {a['success_pct']}",
                a["control_plane"],
            ]
        )
    header = [
        "seed",
        "recipients",
        "soft bounces static → adaptive",
        "soft bounces cut",
        "deferrals",
        "time to deliver s",
        "speed-up",
        "success %",
        "control plane",
    ]
    return _table(rows, header) if rows else []


def provider_rows(result: SimResult) -> list[list[Any]]:
    totals: dict[str, list[int]] = {}
    last: dict[str, int] = {}
    for step in result.timeline:
        for label, row in step.rows.items():
            acc = totals.setdefault(label, [0, 0, 0, 0, 0])
            for i, v in enumerate(row):
                acc[i] += v
            if row[DELIVERED]:
                last[label] = (step.t_ms - result.start_ms) // 60_000
    return [
        [label, *totals[label], last.get(label, "-")]
        for label in sorted(totals, key=lambda k: -totals[k][ATTEMPTS])
    ]


def throttle_changes(result: SimResult, limit: int = 30) -> list[str]:
    """The first settings the simulator read for provider groups and IPs (not small domains)."""
    rows = [
        [
            (rec["event_time"] - result.start_ms) // 60_000,
            rec["key"],
            rec["mode"],
            rec["max_rate_per_hour"],
            str(rec["reason"]).replace("|", "/")[:100],
        ]
        for rec in result.throttle_history
        if not rec["key"].startswith("domain:")
    ]
    if not rows:
        return []
    shown = _table(rows[:limit], ["min", "key", "mode", "rate/h", "reason"])
    more = [f"... and {len(rows) - limit} more"] if len(rows) > limit else []
    return ["Throttle settings as the MTA read them:", "", *shown, *more]


def markdown(results: Sequence[SimResult], plots: dict[str, list[str]]) -> str:
    out = ["# Closed-loop simulation", ""]
    comparison = comparison_table(results)
    if comparison:
        out += ["## Adaptive against static", "", *comparison, ""]
    out += ["## Runs", "", *summary_table(results), ""]
    out += [
        "soft bounces: attempts answered with a transient or non-address failure (rate "
        "limits, temporary blocks, full mailboxes, disabled accounts); deferrals: those that "
        "were rate-limit replies; time to deliver: virtual time of the last delivery.",
        "",
    ]
    for r in results:
        s = r.summary
        name = f"{s['mode']}, seed {s['seed']}"
        out += [f"## Per provider: {name}", ""]
        out += _table(
            provider_rows(r),
            ["provider", "attempts", "delivered", "deferrals", "other soft", "hard", "last min"],
        )
        kpi = s.get("pipeline_kpi")
        if kpi:
            out += ["", f"Pipeline EFS KPI of the delivery: {json.dumps(kpi, sort_keys=True)}"]
        out += ["", *throttle_changes(r), ""]
        out += [f"![{name}: {Path(p).stem}]({Path(p).name})" for p in plots.get(name, [])]
        out += [""]
    if not any(plots.values()):
        out += ["(plots skipped: install the `sim` extra for matplotlib)", ""]
    return "\n".join(out)


def _bins(result: SimResult) -> tuple[list[float], dict[str, list[list[int]]]]:
    end = max((s.t_ms for s in result.timeline), default=result.start_ms)
    n = (end - result.start_ms) // (BIN_MIN * 60_000) + 1
    hours = [i * BIN_MIN / 60 for i in range(n)]
    series: dict[str, list[list[int]]] = {}
    for step in result.timeline:
        i = (step.t_ms - result.start_ms) // (BIN_MIN * 60_000)
        for label, row in step.rows.items():
            bins = series.setdefault(label, [[0, 0] for _ in range(n)])
            bins[i][0] += row[ATTEMPTS] - row[DEFERRALS] - row[SOFT] - row[HARD]
            bins[i][1] += row[DEFERRALS]
    return hours, series


def _horizon_h(result: SimResult) -> float:
    """Plots end a little after the last delivery: later on, only full mailboxes retry.
    Multi-campaign runs show all their days."""
    if result.summary.get("campaigns") and result.timeline:
        return (result.timeline[-1].t_ms - result.start_ms) / 3_600_000 + 1
    ttd = result.summary["time_to_deliver_s"] or 0
    return ttd / 3600 * 1.2 + 0.5


def plot(result: SimResult, out_dir: Path) -> list[Path]:
    """Per provider: sends and deferrals over time; throttle rate per IP over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    s = result.summary
    stem = f"{s['mode']}-seed{s['seed']}"
    hours, series = _bins(result)
    labels = [g for g in (*PLOTTED_GROUPS, "tail") if g in series]
    if not labels:
        return []
    fig, grid = plt.subplots(
        len(labels), 1, figsize=(9, 1.6 * len(labels) + 1), sharex=True, squeeze=False
    )
    axes = list(grid[:, 0])
    for ax, label in zip(axes, labels, strict=True):
        ax.plot(hours, [b[0] for b in series[label]], label="delivered", color="tab:green")
        ax.plot(hours, [b[1] for b in series[label]], label="deferred", color="tab:red")
        ax.set_ylabel(label, rotation=0, ha="right")
    axes[0].legend(loc="upper right")
    axes[0].set_title(f"{s['mode']} (seed {s['seed']}): messages per {BIN_MIN} min")
    axes[-1].set_xlabel("virtual hours")
    axes[-1].set_xlim(0, _horizon_h(result))
    sends = out_dir / f"{stem}-sends.png"
    fig.tight_layout()
    fig.savefig(sends, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    for group in PLOTTED_GROUPS:
        points = [
            ((st.t_ms - result.start_ms) / 3_600_000, st.limits[group])
            for st in result.timeline
            if group in st.limits
        ]
        if points:
            ax.step([p[0] for p in points], [p[1] for p in points], where="post", label=group)
    ax.set_yscale("log")
    ax.set_xlim(0, _horizon_h(result))
    ax.set_xlabel("virtual hours")
    ax.set_ylabel("messages / hour / IP")
    ax.set_title(f"{s['mode']} (seed {s['seed']}): effective throttle rate per IP")
    ax.legend(fontsize="small", ncol=4)
    rates = out_dir / f"{stem}-throttle.png"
    fig.tight_layout()
    fig.savefig(rates, dpi=90)
    plt.close(fig)
    return [sends, rates]


def write(results: Sequence[SimResult], out_dir: Path) -> Path:
    """report.md, summary.json and the plots in ``out_dir``; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        f"{r.summary['mode']}, seed {r.summary['seed']}": [str(p) for p in plot(r, out_dir)]
        for r in results
    }
    (out_dir / "summary.json").write_text(
        json.dumps([r.summary for r in results], indent=2, sort_keys=True) + "\n"
    )
    path = out_dir / "report.md"
    path.write_text(markdown(results, plots) + "\n")
    return path
