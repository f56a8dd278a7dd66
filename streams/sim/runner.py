"""The closed loop: Campaign → MTA → providers → events → pipeline → throttle → MTA.

Virtual time advances in fixed steps (one minute by default). Each step the MTA reads the
current settings (adaptive), the MX rules' baselines (static) or fixed limits found in
hindsight (oracle, ``FixedLimitBook``), sends what they allow, and the step's events go to
the pipeline through the control plane, whose ``sync()`` returns once their feedback has
been processed. When nothing can happen before some later time (everything waits for a
retry or a suspension), the loop jumps there and moves the pipeline's clock with
``advance``.

A run sends the campaigns of its scenario's world (``worlds``) one after the other, each
at its day, on the same providers and the same control plane: what the providers and the
controller learned during one campaign is there for the next.

Event time starts four days before today's midnight (UTC) by default (and as many days
earlier as the world's campaigns span), so that the whole simulated validity stays in the
past and the workers accept the events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.domain.control.mx_rules import DEFAULT_GROUP, MxRules, load_mx_rules
from streams.sim.campaign import CampaignSpec
from streams.sim.control import ControlPlane
from streams.sim.mta import DAY_S, DEFERRALS, DELIVERED, SOFT, LimitBook, Limits, Mta, MtaTotals
from streams.sim.providers import SENDING_IPS, ProviderNetwork
from streams.sim.worlds import Campaign, World, build_world

Mode = Literal["adaptive", "static", "oracle"]
PLOTTED_GROUPS = ("google", "yahoo", "microsoft", "apple", "comcast", "orange", "gmx", "mailru")
TAIL = "tail"  # the oracle's label for every domain of the default group
ALL = "*"  # the oracle's multiplier for every label not named


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
    scenario: str = "steady"
    # oracle: (provider label, multiplier of its hidden capacity); "tail": every small domain
    multipliers: tuple[tuple[str, float], ...] = ()

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
class LabelStats:
    """One provider label over a run: what the oracle's search weighs."""

    finish_s: int = 0  # summed over campaigns: last delivery after the campaign's start
    soft: int = 0  # deferrals and other soft failures (connection failures included)
    delivered: int = 0


@dataclass
class SimResult:
    config: SimConfig
    start_ms: int
    summary: dict[str, Any]
    timeline: list[StepRecord] = field(default_factory=list)
    throttle_history: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, LabelStats] = field(default_factory=dict)


class FixedLimitBook(LimitBook):
    """The oracle's limits: per (key, IP) a multiplier of the provider's hidden capacity for
    that IP as it is when the campaign starts (``at_ms``), and the group's largest
    connection limits, so that the rate is what binds. Nothing of it reaches the controller."""

    def __init__(
        self,
        rules: MxRules,
        providers: ProviderNetwork,
        multipliers: Mapping[str, float],
        at_ms: int,
    ) -> None:
        super().__init__(rules, None)
        self.providers = providers
        self.multipliers = dict(multipliers)
        self.at_ms = at_ms
        self._fixed: dict[tuple[str, str], Limits] = {}

    def limits(self, key: str, group: str, ip: str) -> Limits:
        found = self._fixed.get((key, ip))
        if found is None:
            tail = group == DEFAULT_GROUP
            provider = self.providers.named(key.split(":", 1)[1] if tail else group)
            provider.settle(self.at_ms)
            label = TAIL if tail else group
            m = self.multipliers.get(label, self.multipliers.get(ALL, 1.0))
            g = self.rules.group(group)
            found = self._fixed[(key, ip)] = Limits(
                max(1, round(m * provider.capacity(ip))),
                g.max_connections.max,
                g.max_messages_per_connection.max,
                g.retry_interval_s,
            )
        return found


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


@dataclass
class _Done:
    """What one campaign's loop leaves behind."""

    campaign: Campaign
    start_ms: int
    end_ms: int
    totals: MtaTotals
    kpi: Mapping[str, Any] | None


class _Loop:
    """Sends a world's campaigns in turn through one control plane."""

    def __init__(
        self,
        config: SimConfig,
        control: ControlPlane,
        rules: MxRules,
        world: World,
        on_step: Callable[[Progress], None] | None,
    ) -> None:
        self.config = config
        self.control = control
        self.rules = rules
        self.world = world
        self.on_step = on_step
        self.history: list[dict[str, Any]] = []
        self.timeline: list[StepRecord] = []
        self.labels: dict[str, LabelStats] = {}
        self.events = 0
        self.total = sum(c.spec.recipients for c in world.campaigns)
        self._seen_versions: dict[str, int] = {}

    def book(self, fixed: FixedLimitBook | None) -> LimitBook:
        settings = self.control.throttle()
        for key, rec in settings.items():
            if self._seen_versions.get(key) != rec["version"]:
                self._seen_versions[key] = rec["version"]
                self.history.append(dict(rec))
        if fixed is not None:
            return fixed
        return LimitBook(self.rules, settings if self.config.mode == "adaptive" else None)

    def campaign(self, campaign: Campaign, start: int, later: int) -> _Done:
        """One campaign from ``start`` until its last message is final; ``later``: the
        recipients of the campaigns still to come (for progress)."""
        config, control, spec = self.config, self.control, campaign.spec
        step_ms = config.step_s * 1000
        validity = {} if self.world.validity_s is None else {"validity_s": self.world.validity_s}
        mta = Mta(
            self.rules, self.world.providers, self.world.ips, spec.delivery_id, spec.seed,
            step_ms, **validity,
        )  # fmt: skip
        fixed = None
        if config.mode == "oracle":
            fixed = FixedLimitBook(
                self.rules, self.world.providers, dict(config.multipliers), start
            )
        events = mta.submit(campaign.recipients, start)
        self.events += len(events)
        control.publish(events)
        control.sync()
        t = start
        limits = self.book(fixed)
        while not mta.done:
            in_force = _group_limits(limits, mta, t)
            events, rows = mta.step(t, limits)
            self.events += len(events)
            control.publish(events)
            control.sync()
            limits = self.book(fixed)
            record = StepRecord(t, rows, in_force)
            self.timeline.append(record)
            self._count(rows)
            if self.on_step is not None:
                kpi = control.kpi(spec.delivery_id)
                self.on_step(
                    Progress(
                        t_ms=t,
                        start_ms=start,
                        totals=mta.totals,
                        pending=mta.pending + later,
                        recipients=self.total,
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
                limits = self.book(fixed)
            t = nxt
        for label, at in mta.last_delivery.items():
            self.labels.setdefault(label, LabelStats()).finish_s += (at - start) // 1000
        return _Done(campaign, start, t, mta.totals, control.kpi(spec.delivery_id))

    def _count(self, rows: Mapping[str, list[int]]) -> None:
        for label, row in rows.items():
            stats = self.labels.setdefault(label, LabelStats())
            stats.soft += row[DEFERRALS] + row[SOFT]
            stats.delivered += row[DELIVERED]


def simulate(
    config: SimConfig,
    control: ControlPlane,
    rules: MxRules | None = None,
    on_step: Callable[[Progress], None] | None = None,
) -> SimResult:
    rules = rules or load_mx_rules(None)
    spec = config.spec()
    world = build_world(config.scenario, spec, config.ips, config.capacity_scale)
    day_ms = DAY_S * 1000
    start = config.start_ms
    if start is None:
        start = default_start_ms() - world.span_days * day_ms
    if config.mode == "oracle" and not config.multipliers:
        raise ValueError("oracle mode needs multipliers (streams.sim.oracle finds them)")
    wall = time.monotonic()
    loop = _Loop(config, control, rules, world, on_step)
    done: list[_Done] = []
    later = loop.total
    for campaign in world.campaigns:
        at = start + campaign.day * day_ms
        if done:
            at = max(at, done[-1].end_ms)
            control.advance(at)
            control.sync()
        later -= campaign.spec.recipients
        done.append(loop.campaign(campaign, at, later))
    summary = _summary(config, spec, done, loop)
    summary["wall_s"] = round(time.monotonic() - wall, 1)
    return SimResult(config, start, summary, loop.timeline, loop.history, loop.labels)


def _ttd_s(d: _Done) -> int | None:
    last = d.totals.last_delivery_ms
    return None if last is None else (last - d.start_ms) // 1000


def _kpi(kpi: Mapping[str, Any] | None) -> dict[str, Any] | None:
    keys = ("to_deliver", "sent", "failed", "pending", "success_pct")
    return None if kpi is None else {k: kpi[k] for k in keys}


def _summary(
    config: SimConfig, spec: CampaignSpec, done: list[_Done], loop: _Loop
) -> dict[str, Any]:
    totals = MtaTotals()
    for d in done:
        for name in vars(totals):
            if name != "last_delivery_ms":
                setattr(totals, name, getattr(totals, name) + getattr(d.totals, name))
    ttds = [t for t in map(_ttd_s, done) if t is not None]
    recipients = loop.total
    kpis = [d.kpi for d in done]
    if len(done) == 1:
        kpi = _kpi(kpis[0])
    elif any(k is None for k in kpis):
        kpi = None
    else:
        sums = {
            k: sum(int(x[k]) for x in kpis if x)
            for k in ("to_deliver", "sent", "failed", "pending")
        }
        kpi = {**sums, "success_pct": round(sums["sent"] / max(1, sums["to_deliver"]) * 100, 4)}
    summary: dict[str, Any] = {
        "mode": config.mode,
        "scenario": config.scenario,
        "seed": spec.seed,
        "recipients": recipients,
        "sent": totals.delivered,
        "failed": totals.failed,
        "soft_bounces": totals.soft_bounces,
        "deferrals": totals.rate_limited,
        "blocks": totals.blocked,
        "hard_bounces": totals.hard_bounces,
        "complaints": totals.complaints,
        "connection_failures": totals.connection_failures,
        "attempts": totals.attempts,
        "time_to_deliver_s": sum(ttds) if ttds else None,
        "success_pct": round(totals.delivered / recipients * 100, 2) if recipients else 0.0,
        "events": loop.events,
        "steps": len(loop.timeline),
        "throttle_records": loop.control.throttle_records,
        "control_plane": loop.control.name,
        "pipeline_kpi": kpi,
    }
    if len(done) > 1:
        summary["campaigns"] = [
            {
                "delivery_id": d.campaign.spec.delivery_id,
                "recipients": d.campaign.spec.recipients,
                "soft_bounces": d.totals.soft_bounces,
                "deferrals": d.totals.rate_limited,
                "blocks": d.totals.blocked,
                "time_to_deliver_s": _ttd_s(d),
                "success_pct": round(
                    d.totals.delivered / max(1, d.campaign.spec.recipients) * 100, 2
                ),
            }
            for d in done
        ]
    return summary
