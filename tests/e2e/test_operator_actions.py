"""End to end: operator actions produced to the operator topic reach a worker, change the
address through the same state machine, land in the address topic and the Redis views with
the operator's reason, leave messages and KPIs alone, and do not hold the control step."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from factories import JAN_2026, event

from streams.domain.events import OperatorEvent, OperatorKind
from streams.runtime.config import Settings
from streams.runtime.producer import EventProducer
from streams.serving.consumer import OutputConsumer
from streams.serving.views import ViewStore
from streams.testing.worker import WorkerProcess

from .reference import diff, reference, stream_state

pytestmark = [pytest.mark.broker, pytest.mark.redis, pytest.mark.e2e]

# The operator acts a minute after the MTA's first events.
ACTED = 60_000
USER_UNKNOWN = {
    "smtp_code": 550,
    "enhanced_status": "5.1.1",
    "diagnostic": "550 5.1.1 The email account that you tried to reach does not exist",
}
MAILBOX_FULL = {"smtp_code": 452, "enhanced_status": "4.2.2", "diagnostic": "452 Mailbox full"}


def action(
    kind: OperatorKind, recipient: str, actor: str, reason: str | None = None
) -> OperatorEvent:
    return {
        "event_id": f"op-{kind}-{recipient}",
        "event_time": JAN_2026 + ACTED,
        "recipient": recipient,
        "kind": kind,
        "actor": actor,
        "reason": reason,
    }


def every_record(
    settings: Settings, topic: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the start, once ``done`` holds of them (or 90 s passed)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 90
    with OutputConsumer(settings, topic) as consumer:
        while time.monotonic() < deadline and not done(got):
            got += [
                r.value
                for r in consumer.records(idle_timeout=1.0, max_wait=2.0)
                if r.value is not None  # a retired address's tombstone
            ]
    return got


def history(records: list[dict[str, Any]], address: str) -> list[tuple[int, str, str | None]]:
    """(version, state, reason) of one address, each version once."""
    seen = {r["version"]: (r["state"], r["reason"]) for r in records if r["address"] == address}
    return [(v, *seen[v]) for v in sorted(seen)]


def states_are(want: dict[str, str]) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda got: all(history(got, a) and history(got, a)[-1][1] == s for a, s in want.items())


def redis_views(store: ViewStore, versions: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The Redis views of the addresses, once each has its version (or 30 s passed)."""
    deadline = time.monotonic() + 30
    while True:
        views = {a: store.read("addr", a) or {} for a in versions}
        done = all(views[a].get("version") == v for a, v in versions.items())
        if done or time.monotonic() > deadline:
            return views
        time.sleep(0.2)


def gmail_deferral(i: int) -> dict[str, Any]:
    """A rate-limit reply at Google, after the actions: a throttle decision to wait for."""
    return event(
        f"G{i}",
        "deferred",
        2 * ACTED + i * 1000,
        recipient=f"user{i}@gmail.com",
        delivery_id="D2",
        attempt=1,
        smtp_code=421,
        enhanced_status="4.7.28",
        diagnostic="421-4.7.28 unusual rate of unsolicited mail - gsmtp",
        mx_host="gmail-smtp-in.l.google.com",
        sending_ip="192.0.2.10",
    )


def test_operator_actions_go_through_the_worker_to_the_topics_and_views(make_settings, tmp_path):
    settings = make_settings()
    late = {"recipient": "q1@example.org", "delivery_id": "D2"}
    # Three rounds, each waited for: the address topic shows the versions in arrival order,
    # and an action and a bounce sit on different topics, read in no fixed order.
    before = [
        ("bounce", event("Q1", "sync", 0, **USER_UNKNOWN)),
        ("bounce", event("C1", "complaint", 0)),
    ]
    actions = [
        ("operator", action("lift", "q1@example.org", "alice@ops", "Mailbox confirmed by phone")),
        ("operator", action("undenylist", "c1@example.org", "bob")),
        ("operator", action("denylist", "z1@example.org", "carol", "Spam trap from a partner")),
    ]
    refused = ("operator", action("denylist", "y1@example.org", "  "))
    after = [
        # Before the lift, arriving late: ignored. After it: applies on top.
        ("bounce", event("Q0", "async", ACTED // 2, **late, **USER_UNKNOWN)),
        ("bounce", event("Q2", "sync", 2 * ACTED, **late, **MAILBOX_FULL)),
        *(("retry", gmail_deferral(i)) for i in range(5)),
    ]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        for batch, want in (
            (before, {"q1@example.org": "quarantined", "c1@example.org": "denylisted"}),
            ([*actions, refused], {"c1@example.org": "valid", "z1@example.org": "denylisted"}),
            (after, {"q1@example.org": "with_errors"}),
        ):
            with EventProducer(settings) as producer:
                for family, ev in batch:
                    producer.send(family, ev)
            addresses = every_record(settings, "address", states_are(want))

        assert history(addresses, "q1@example.org") == [
            (1, "quarantined", "User unknown"),
            (2, "valid", "Mailbox confirmed by phone"),
            (3, "with_errors", "Mailbox full"),
        ]
        assert history(addresses, "c1@example.org") == [
            (1, "denylisted", "Complaint"),
            (2, "valid", "Undenylisted by operator"),
        ]
        assert history(addresses, "z1@example.org") == [
            (1, "denylisted", "Spam trap from a partner")
        ]

        # The audit trail: every action with who and why, on the operator topic.
        audit = every_record(settings, "operator", lambda got: len(got) >= 4)
        assert sorted((r["recipient"], r["kind"], r["actor"], r["reason"]) for r in audit) == [
            ("c1@example.org", "undenylist", "bob", None),
            ("q1@example.org", "lift", "alice@ops", "Mailbox confirmed by phone"),
            ("y1@example.org", "denylist", "  ", None),
            ("z1@example.org", "denylist", "carol", "Spam trap from a partner"),
        ]
        dead = every_record(settings, "dlq", lambda got: len(got) >= 1)
        assert [(d["source_topic"], d["error"]) for d in dead] == [
            (settings.topic("operator"), "actor is blank or longer than 256 characters")
        ]

        # The worker agrees with replay over the same input, and the actions changed no
        # message, KPI or throttle setting: those equal replay's without them.
        everything = reference([*before, *actions, *after], settings.partitions)
        assert diff(everything, stream_state(settings, everything)) == []
        without = reference([*before, *after], settings.partitions)
        for kind in ("message", "kpi", "throttle"):
            assert everything[kind] == without[kind], kind
        assert everything["throttle"]["ip_group:192.0.2.10|google"]["mode"] == "backoff"

        store = ViewStore.from_settings(settings)
        views = redis_views(store, {"q1@example.org": 3, "c1@example.org": 2, "z1@example.org": 1})
        assert views["z1@example.org"]["reason"] == "Spam trap from a partner"
        assert views["c1@example.org"]["reason"] == "Undenylisted by operator"
        assert views["q1@example.org"]["error_count"] == 1
        assert store.is_listed("z1@example.org") == "denylisted"
        assert store.is_listed("c1@example.org") is None
        assert "Traceback" not in worker.log_text()
    finally:
        worker.stop()
