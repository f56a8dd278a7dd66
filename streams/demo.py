"""``mta-feedback demo``: the pipeline on the embedded stack over a generated campaign.

Starts what is not running (broker, Redis, one worker), produces a sample campaign,
follows the outputs until the delivery's KPIs settle, prints a summary, and stops only
what it started. Topics get a fresh prefix per run, so runs never mix.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from streams.config import Settings
from streams.consumer import OutputConsumer
from streams.producer import EventProducer
from streams.stack import Stack, answers, broker_address
from streams.testing.sample import SampleCampaign
from streams.testing.worker import WorkerProcess
from streams.views import ViewStore


def latest_by_key(settings: Settings, topic: str, idle: float = 3.0) -> dict[str, dict[str, Any]]:
    """Newest version of each key on an output topic (what a compacted read gives)."""
    latest: dict[str, dict[str, Any]] = {}
    with OutputConsumer(settings, topic) as consumer:
        for record in consumer.records(idle_timeout=idle, max_wait=120):
            key = (record.key or b"").decode()
            if key not in latest or record.value["version"] >= latest[key]["version"]:
                latest[key] = record.value
    return latest


def wait_for_kpi(
    settings: Settings, delivery_id: str, expected: int, timeout: float, console: Console
) -> dict[str, Any] | None:
    """Follow the KPI topic until the delivery counts every message and stops changing."""
    kpi: dict[str, Any] | None = None
    with OutputConsumer(settings, "kpi") as consumer:
        for record in consumer.records(idle_timeout=5.0, max_wait=timeout):
            value = record.value
            if value["delivery_id"] != delivery_id:
                continue
            if kpi is None or value["version"] > kpi["version"]:
                kpi = value
                console.print(
                    f"  KPI v{kpi['version']}: to deliver {kpi['to_deliver']}/{expected}, "
                    f"sent {kpi['sent']}, failed {kpi['failed']}, pending {kpi['pending']}",
                    end="\r",
                )
    console.print()
    return kpi


def run(recipients: int = 2000, seed: int = 7) -> int:
    console = Console()
    base = Settings.from_env()
    prefix = f"demo{int(time.time())}"
    settings = dataclasses.replace(base, topic_prefix=prefix, app_id=prefix)
    stack = Stack(settings)
    broker_was_up = answers(*broker_address(settings))
    console.rule("[bold]mta-feedback demo")
    console.print(f"stack: {', '.join(s.describe() for s in stack.up())}")
    worker = WorkerProcess(settings, Path(settings.run_dir) / f"{prefix}-worker.log")
    try:
        console.print("starting a worker ...")
        worker.start().wait_ready()
        campaign = SampleCampaign(recipients=recipients, seed=seed)
        events = campaign.events()
        console.print(f"producing {len(events)} events for {recipients} recipients ...")
        started = time.monotonic()
        with EventProducer(settings) as producer:
            for family, event in events:
                producer.send(family, event)
        kpi = wait_for_kpi(settings, campaign.delivery_id, recipients, 180, console)
        elapsed = time.monotonic() - started
        statuses = latest_by_key(settings, "status")
        addresses = latest_by_key(settings, "address")
        _summary(console, kpi, statuses, addresses, len(events), elapsed)
        _lookup_example(console, settings, statuses)
        ok = kpi is not None and kpi["to_deliver"] == recipients
    finally:
        worker.stop()
        if not broker_was_up:
            stack.down()
    return 0 if ok else 1


def _summary(
    console: Console,
    kpi: dict[str, Any] | None,
    statuses: dict[str, dict[str, Any]],
    addresses: dict[str, dict[str, Any]],
    n_events: int,
    elapsed: float,
) -> None:
    if kpi is None:
        console.print("[red]no KPI record arrived[/red]")
        return
    table = Table(title=f"Email Feedback Service — delivery {kpi['delivery_id']}")
    for name in ("to_deliver", "sent", "failed", "failed_hard", "failed_soft", "pending"):
        table.add_column(name.replace("_", " "), justify="right")
    table.add_column("success %", justify="right")
    table.add_column("bounces+errors", justify="right")
    table.add_row(
        *(str(kpi[n]) for n in ("to_deliver", "sent", "failed", "failed_hard", "failed_soft")),
        str(kpi["pending"]),
        f"{kpi['success_pct']:.1f}",
        str(kpi["bounces_errors"]),
    )
    console.print(table)
    reasons = Counter(
        (s["status"], s["failure_type"] or "-", s["failure_reason"] or "-")
        for s in statuses.values()
    )
    by_reason = Table(title="Messages by status and reason")
    for col in ("status", "failure type", "reason", "messages"):
        by_reason.add_column(col)
    for (status, ftype, reason), count in reasons.most_common():
        by_reason.add_row(status, ftype, reason, str(count))
    console.print(by_reason)
    states = Counter(a["state"] for a in addresses.values())
    console.print("address health: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    console.print(f"{n_events} events processed end to end in {elapsed:.1f}s")


def _lookup_example(
    console: Console, settings: Settings, statuses: dict[str, dict[str, Any]]
) -> None:
    if not statuses:
        return
    store = ViewStore.from_settings(settings)
    message_id = next(iter(sorted(statuses)))
    deadline = time.monotonic() + 10
    view = store.read("msg", message_id)
    while view is None and time.monotonic() < deadline:
        time.sleep(0.2)
        view = store.read("msg", message_id)
    console.print(f"Redis view of message {message_id}: {view}")
