"""``mta-feedback demo``: a short adaptive closed-loop simulation on the embedded stack.

Starts what is not running (broker, Redis, a worker on fresh topics), runs the simulator
(``streams.sim``) against the real worker with a live view of the delivery's EFS KPIs
(read from the KPI topic) and of the throttle per provider (read from the control topic),
ends with the summary tables, and stops only what it started.

Full mailboxes are left out of the demo campaign: they keep a message retrying for the
whole 3.5-day validity, which costs wall time and shows nothing new. Below 5,000
recipients the providers' hidden capacities shrink in proportion.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streams.runtime.config import Settings
from streams.sim.campaign import CampaignSpec
from streams.sim.kafka_control import KafkaControlPlane
from streams.sim.report import provider_rows
from streams.sim.runner import PLOTTED_GROUPS, Progress, SimConfig, SimResult, simulate
from streams.sim.session import pipeline

FULL_PRESSURE_RECIPIENTS = 5000
_KPI_FIELDS = ("to_deliver", "taken_into_account", "sent", "failed", "bounces_errors")


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M")


def kpi_table(delivery_id: str, kpi: Mapping[str, Any] | None) -> Table:
    table = Table(title=f"EFS KPIs — delivery {delivery_id} (from the pipeline)")
    for name in _KPI_FIELDS:
        table.add_column(name.replace("_", " "), justify="right")
    table.add_column("success %", justify="right")
    if kpi is None:
        table.add_row(*["-"] * (len(_KPI_FIELDS) + 1))
    else:
        table.add_row(*(str(kpi[n]) for n in _KPI_FIELDS), f"{kpi['success_pct']:.1f}")
    return table


def throttle_table(settings: Mapping[str, Mapping[str, Any]], now_ms: int) -> Table:
    table = Table(title="Throttle per provider (control topic)")
    for col in ("key", "mode", "rate/h", "conns", "msgs/conn", "until"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("key", "mode") else "right")
    table.add_column("reason", no_wrap=True, overflow="ellipsis", max_width=70)
    keys = sorted(k for k in settings if not k.startswith("domain:"))
    for key in keys:
        s = settings[key]
        until = s.get("suspended_until")
        table.add_row(
            key,
            s["mode"],
            str(s["max_rate_per_hour"]),
            str(s["max_connections"]),
            str(s["max_messages_per_connection"]),
            _clock(until) if until and until > now_ms else "",
            str(s["reason"])[:90],
        )
    shown = {k.removeprefix("group:") for k in keys}
    rest = [g for g in PLOTTED_GROUPS if g not in shown]
    if rest:
        table.add_row(", ".join(rest), "baseline", "", "", "", "", "no change published")
    domains = sum(1 for k in settings if k.startswith("domain:"))
    if domains:
        table.add_row(f"domain:* ({domains})", "", "", "", "", "", "small domains, own limits")
    return table


def live_view(p: Progress, delivery_id: str) -> Group:
    t = p.totals
    elapsed = (p.t_ms - p.start_ms) // 60_000
    head = Text(
        f"virtual time +{elapsed // 60}h{elapsed % 60:02d}  |  pending {p.pending}/{p.recipients}"
        f"  |  attempts {t.attempts}  delivered {t.delivered}  rate-limit deferrals "
        f"{t.rate_limited}  soft {t.soft_bounces}  hard {t.hard_bounces}",
        style="bold",
    )
    return Group(head, kpi_table(delivery_id, p.kpi), throttle_table(p.throttle, p.t_ms))


def summary_table(result: SimResult) -> Table:
    s = result.summary
    table = Table(title=f"Summary — {s['mode']}, seed {s['seed']}, {s['recipients']} recipients")
    for name in ("sent", "failed", "soft_bounces", "deferrals", "hard_bounces"):
        table.add_column(name.replace("_", " "), justify="right")
    table.add_column("time to deliver", justify="right")
    table.add_column("success %", justify="right")
    ttd = s["time_to_deliver_s"] or 0
    table.add_row(
        *(str(s[n]) for n in ("sent", "failed", "soft_bounces", "deferrals", "hard_bounces")),
        f"{ttd // 3600}h{ttd % 3600 // 60:02d}m (virtual)",
        f"{s['success_pct']:.2f}",
    )
    return table


def providers_table(result: SimResult) -> Table:
    table = Table(title="Per provider")
    for col in ("provider", "attempts", "delivered", "deferrals", "other soft", "hard", "last min"):
        table.add_column(col, justify="left" if col == "provider" else "right")
    for row in provider_rows(result):
        table.add_row(*(str(c) for c in row))
    return table


def run(recipients: int = 5000, seed: int = 7) -> int:
    console = Console()
    console.rule("[bold]mta-feedback demo: adaptive throttling in a closed loop")
    wall = time.monotonic()
    delivery_id = f"DEMO-{int(time.time())}"
    config = SimConfig(
        mode="adaptive",
        seed=seed,
        campaign=CampaignSpec(recipients, seed, delivery_id, mailbox_full_share=0.0),
        # A smaller campaign meets proportionally smaller providers, so it still shows the
        # throttle at work.
        capacity_scale=min(1.0, recipients / FULL_PRESSURE_RECIPIENTS),
    )
    with pipeline(Settings.from_env(), "demo-", console.print) as settings:
        control = KafkaControlPlane(settings)
        try:
            with Live(Text("starting ..."), console=console, refresh_per_second=4) as live:
                result = simulate(
                    config, control, on_step=lambda p: live.update(live_view(p, delivery_id))
                )
                live.update(
                    Group(
                        kpi_table(delivery_id, control.kpi(delivery_id)),
                        throttle_table(
                            control.throttle(),
                            result.timeline[-1].t_ms if result.timeline else 0,
                        ),
                    )
                )
        finally:
            control.close()
    console.print()
    console.print(summary_table(result))
    console.print(providers_table(result))
    kpi = result.summary["pipeline_kpi"]
    ok = (
        kpi is not None
        and kpi["pending"] == 0
        and kpi["sent"] == result.summary["sent"]
        and kpi["failed"] == result.summary["failed"]
    )
    verdict = "agree" if ok else "DISAGREE"
    console.print(
        f"pipeline KPIs and simulator counts {verdict}; wall time {time.monotonic() - wall:.0f}s"
    )
    return 0 if ok else 1
