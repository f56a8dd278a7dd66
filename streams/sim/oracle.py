"""The oracle: fixed limits tuned in hindsight for one world and seed.

It is the opponent an operator who had tuned the limits by hand would be: per provider
(per IP where the provider treats IPs differently) a fixed rate, a multiplier of the
world's hidden capacity for that IP (``runner.FixedLimitBook``; every small domain of the
long tail shares the ``tail`` multiplier of its own capacity). It reads no feedback.

The search sees the world in hindsight: every candidate runs the same world (same seed,
recipients, providers and start) in process with no pipeline (``NoPipeline``: limits that
read no feedback need none). Each provider has its own queue and its own capacities, so
one run measures every provider at once and the search is a coordinate search done for
all providers in parallel:

1. ``GRID``: every provider at the same multiplier, one run per value;
2. ``REFINE``: every provider at its best so far times (1 - r) and (1 + r), two runs per r.

The best multiplier of a provider, over every run so far: among the runs that deliver the
most of its messages and whose finish time for it (its last delivery) is within
``max(2%, 60 s)`` of the fastest the whole campaign can finish (the largest of the
providers' fastest finish times), the one with the fewest soft failures; ties go to the
earlier finish, then the larger multiplier. Multi-campaign worlds sum finish times and
soft failures over their campaigns. The budget is at most ``BUDGET`` runs per world.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from streams.domain.control.mx_rules import MxRules, load_mx_rules
from streams.sim.control import ControlPlane, NoPipeline
from streams.sim.runner import (
    ALL,
    TAIL,
    FixedLimitBook,
    LabelStats,
    Progress,
    SimConfig,
    SimResult,
    default_start_ms,
    simulate,
)
from streams.sim.worlds import DAY_MS, build_world, span_days

BUDGET = 50
GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0)
REFINE = (0.05, 0.025)
TIME_TOLERANCE = (0.02, 60)  # share of the fastest finish, seconds: the larger counts
NO_LANE = ("nx",)  # unknown domains: no provider, no limits

Evaluate = Callable[[Mapping[str, float]], Mapping[str, LabelStats]]


@dataclass
class Found:
    multipliers: dict[str, float]
    runs: int


def choose(evals: Mapping[str, Sequence[tuple[float, LabelStats]]]) -> dict[str, float]:
    """Each label's best multiplier among its evaluations (see the module's rules)."""
    full = {}
    for label, ev in evals.items():
        most = max(s.delivered for _, s in ev)
        full[label] = [(m, s) for m, s in ev if s.delivered >= most]
    if not full:
        return {}
    fastest = max(min(s.finish_s for _, s in ev) for ev in full.values())
    limit = fastest + max(TIME_TOLERANCE[0] * fastest, TIME_TOLERANCE[1])
    out = {}
    for label, ev in full.items():
        in_time = [(m, s) for m, s in ev if s.finish_s <= limit] or ev
        out[label] = min(in_time, key=lambda c: (c[1].soft, c[1].finish_s, -c[0]))[0]
    return out


def search(evaluate: Evaluate, budget: int = BUDGET) -> Found:
    """The best multiplier per label, in at most ``budget`` calls of ``evaluate``."""
    if budget < len(GRID) + 2 * len(REFINE):
        raise ValueError(f"the search needs {len(GRID) + 2 * len(REFINE)} runs, budget {budget}")
    evals: dict[str, list[tuple[float, LabelStats]]] = {}
    runs = 0

    def run(given: Mapping[str, float]) -> None:
        nonlocal runs
        runs += 1
        for label, stats in evaluate(given).items():
            m = given.get(label, given.get(ALL, 1.0))
            evals.setdefault(label, []).append((m, stats))

    for m in GRID:
        run({ALL: m})
    best = choose(evals)
    for r in REFINE:
        for sign in (-1, 1):
            run({label: round(m * (1 + sign * r), 4) for label, m in best.items()})
        best = choose(evals)
    return Found(best, runs)


def found_limits(
    config: SimConfig, multipliers: Mapping[str, float], rules: MxRules
) -> dict[str, Any]:
    """The rates (per hour) the multipliers give each provider group and IP when the first
    campaign starts; the long tail as its multiplier of each small domain's capacity."""
    world = build_world(config.scenario, config.spec(), config.ips, config.capacity_scale)
    book = FixedLimitBook(rules, world.providers, multipliers, config.start_ms or 0)
    out: dict[str, Any] = {}
    for label, m in sorted(multipliers.items()):
        if label == TAIL:
            out[TAIL] = f"{m} x each small domain's capacity"
        else:
            out[label] = {
                ip: book.limits(f"group:{label}", label, ip).rate_per_hour for ip in world.ips
            }
    return out


def run_oracle(
    config: SimConfig,
    control: ControlPlane,
    rules: MxRules | None = None,
    on_step: Callable[[Progress], None] | None = None,
    budget: int = BUDGET,
) -> SimResult:
    """Search the world's best fixed limits in process, then run them through ``control``."""
    rules = rules or load_mx_rules(None)
    start = config.start_ms
    if start is None:
        start = default_start_ms() - span_days(config.scenario) * DAY_MS
    base = replace(config, mode="oracle", start_ms=start)

    def evaluate(multipliers: Mapping[str, float]) -> dict[str, LabelStats]:
        given = replace(base, multipliers=tuple(sorted(multipliers.items())))
        labels = simulate(given, NoPipeline(), rules).labels
        return {k: v for k, v in labels.items() if k not in NO_LANE}

    found = search(evaluate, budget)
    final = replace(base, multipliers=tuple(sorted(found.multipliers.items())))
    result = simulate(final, control, rules, on_step)
    result.summary["oracle"] = {
        "search_runs": found.runs,
        "budget": budget,
        "multipliers": found.multipliers,
        "limits_per_hour": found_limits(final, found.multipliers, rules),
    }
    return result
