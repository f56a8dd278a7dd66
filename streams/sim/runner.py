"""The closed loop: Campaign → MTA → providers → events → pipeline → throttle → MTA.

Virtual time advances in fixed steps (one minute by default). Each step the MTA reads the
current settings (adaptive) or the MX rules' baselines (static), sends what they allow,
and the step's events go to the pipeline through the control plane, whose ``sync()``
returns once their feedback has been processed. When nothing can happen before some later
time (everything waits for a retry or a suspension), the loop jumps there and moves the
pipeline's clock with ``advance``.

Event time starts four days before today's midnight (UTC) by default, so that the whole
simulated validity stays in the past and the workers accept the events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.domain.control.mx_rules import MxRules, load_mx_rules
from streams.sim.campaign import CampaignSpec, build_recipients
from streams.sim.control import ControlPlane
from streams.sim.mta import DAY_S, LimitBook, Mta, MtaTotals
from streams.sim.providers import SENDING_IPS, ProviderNetwork

Mode = Literal["adaptive", "static"]
PLOTTED_GROUPS = ("google", "yahoo", "microsoft", "apple", "comcast", "orange", "gmx", "mailru")


def default_start_ms(now_s: float | None = None) -> int:
    """Midnight UTC four days ago: in the past for the whole run, the same all day."""
    now = time.time() if now_s is None else now_s
    return (int(now) // DAY_S - 4) * DAY_S * 1000


@dataclass(frozen=True)
class SimConfig:
    mode: Mode = "adaptive"
    recipients: int = 10_000
    seed: int = 1
    start_ms: int | None = None
    step_s: int = 60
    queue_run_s: int = 900  # while idle, the MTA wakes up on this grid
    ips: tuple[str, ...] = SENDING_IPS
    campaign: CampaignSpec | None = None  # overrides recipients and seed when given
    capacity_scale: float = 1.0  # multiplies every provider's hidden capacity

    @property
    def delivery_id(self) -> str:
        return f"SIM-{self.mode}-{self.seed}"

    def spec(self) -> CampaignSpec:
        return self.campaign or CampaignSpec(self.recipients, self.seed, self.delivery_id)


@dataclass(frozen=True)
class StepRecord:
    t_ms: int
    rows: dict[str, list[int]]  # label → [attempts, delivered, deferrals, soft, hard]
    limits: dict[str, float]  # group → mean rate per IP in force (0 while suspended)


@dataclass
class Progress:
    """What an observer sees after each step."""

    t_ms: int
    start_ms: int
    totals: MtaTotals
    pending: int
    recipients: int
    step: StepRecord
    throttle: dict[str, dict[str, Any]]
    kpi: dict[str, Any] | None


@dataclass
class SimResult:
    config: SimConfig
    start_ms: int
    summary: dict[str, Any]
    timeline: list[StepRecord] = field(default_factory=list)
    throttle_history: list[dict[str, Any]] = field(default_factory=list)


def _group_limits(book: LimitBook, mta: Mta, t_ms: int) -> dict[str, float]:
    out = {}
    for group in PLOTTED_GROUPS:
        key = f"group:{group}"
        if key not in mta.lanes:
            continue
        rates = [
            0 if lim.suspended(t_ms) else lim.rate_per_hour
            for lim in (book.limits(key, group, ip) for ip in mta.ips)
        ]
        out[group] = sum(rates) / len(rates)
    return out


def simulate(
    config: SimConfig,
    control: ControlPlane,
    rules: MxRules | None = None,
    on_step: Callable[[Progress], None] | None = None,
) -> SimResult:
    rules = rules or load_mx_rules(None)
    spec = config.spec()
    start = config.start_ms if config.start_ms is not None else default_start_ms()
    step_ms = config.step_s * 1000
    providers = ProviderNetwork(spec.seed, capacity_scale=config.capacity_scale)
    mta = Mta(rules, providers, config.ips, spec.delivery_id, spec.seed, step_ms)
    adaptive = config.mode == "adaptive"
    wall = time.monotonic()
    history: list[dict[str, Any]] = []
    seen_versions: dict[str, int] = {}

    def book() -> LimitBook:
        settings = control.throttle()
        for key, rec in settings.items():
            if seen_versions.get(key) != rec["version"]:
                seen_versions[key] = rec["version"]
                history.append(dict(rec))
        return LimitBook(rules, settings if adaptive else None)

    recipients = build_recipients(spec)
    events = mta.submit(recipients, start)
    n_events = len(events)
    control.publish(events)
    control.sync()
    timeline: list[StepRecord] = []
    t = start
    limits = book()
    while not mta.done:
        in_force = _group_limits(limits, mta, t)
        events, rows = mta.step(t, limits)
        n_events += len(events)
        control.publish(events)
        control.sync()
        limits = book()
        record = StepRecord(t, rows, in_force)
        timeline.append(record)
        if on_step is not None:
            kpi = control.kpi(spec.delivery_id)
            on_step(
                Progress(
                    t_ms=t,
                    start_ms=start,
                    totals=mta.totals,
                    pending=mta.pending,
                    recipients=spec.recipients,
                    step=record,
                    throttle=dict(control.throttle()),
                    kpi=None if kpi is None else dict(kpi),
                )
            )
        nxt = t + step_ms
        wake = mta.next_wake(nxt, limits)
        if wake is None:
            break
        if wake > nxt:
            # Idle: skip to the next queue run at or after the wake-up time (an MTA scans
            # its deferred queue periodically), and let the pipeline's clock follow.
            run_ms = max(config.queue_run_s * 1000, step_ms)
            nxt += -(-(wake - nxt) // run_ms) * run_ms
            control.advance(nxt)
            control.sync()
            limits = book()
        t = nxt
    totals = mta.totals
    kpi = control.kpi(spec.delivery_id)
    summary: dict[str, Any] = {
        "mode": config.mode,
        "seed": spec.seed,
        "recipients": spec.recipients,
        "sent": totals.delivered,
        "failed": totals.failed,
        "soft_bounces": totals.soft_bounces,
        "deferrals": totals.rate_limited,
        "hard_bounces": totals.hard_bounces,
        "complaints": totals.complaints,
        "attempts": totals.attempts,
        "time_to_deliver_s": (totals.last_delivery_ms - start) // 1000
        if totals.last_delivery_ms is not None
        else None,
        "success_pct": round(totals.delivered / spec.recipients * 100, 2)
        if spec.recipients
        else 0.0,
        "events": n_events,
        "steps": len(timeline),
        "throttle_records": control.throttle_records,
        "control_plane": control.name,
        "wall_s": round(time.monotonic() - wall, 1),
        "pipeline_kpi": None
        if kpi is None
        else {k: kpi[k] for k in ("to_deliver", "sent", "failed", "pending", "success_pct")},
    }
    return SimResult(config, start, summary, timeline, history)
