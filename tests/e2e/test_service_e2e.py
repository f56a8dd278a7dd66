"""End to end: MTA records posted to the HTTP service reach the same statuses, quarantines
and KPIs (output topics and Redis views) as ``mta-feedback convert | replay`` computes from
the same records. A worker subprocess with its Redis view updater, a ``serve``
subprocess, the embedded broker and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from integration.mta_records import kumo_record, sparkpost_event
from integration.service import ServiceProcess

from streams.serving.views import ViewStore
from streams.testing.worker import WorkerProcess, settings_env
from streams.tools.replay import Replayer

from .reference import diff, reference, stream_state

pytestmark = [pytest.mark.broker, pytest.mark.redis, pytest.mark.e2e]

SPARKPOST_OUTCOMES = ("delivery", "bounce", "delay", "out_of_band", "spam_complaint", "delivery")
KUMO_OUTCOMES = ("Delivery", "TransientFailure", "Bounce", "Expiration", "Delivery")


def sparkpost_records(tag: str, recipients: int) -> list[dict[str, Any]]:
    out = []
    for n in range(recipients):
        outcome = SPARKPOST_OUTCOMES[n % len(SPARKPOST_OUTCOMES)]
        out.append(sparkpost_event("injection", n, tag))
        if outcome in ("out_of_band", "spam_complaint"):  # after a delivery
            out.append(sparkpost_event("delivery", n, tag))
        out.append(sparkpost_event(outcome, n, tag))
    return out


def kumo_story(tag: str, recipients: int) -> list[dict[str, Any]]:
    out = []
    for n in range(recipients):
        outcome = KUMO_OUTCOMES[n % len(KUMO_OUTCOMES)]
        out.append(kumo_record("Reception", n, tag))
        if outcome == "TransientFailure" and n % 2:
            # How kumod logs a message held by a suspension: not a remote verdict.
            held = kumo_record("TransientFailure", n, tag)
            held["response"] = {
                "code": 451,
                "enhanced_code": {"class": 4, "subject": 4, "detail": 4},
                "content": "KumoMTA internal: ready queue suspended by TSA",
                "command": None,
            }
            held["timestamp"] += 60
            out.append(held)
        out.append(kumo_record(outcome, n, tag))
    return out


def converted(fmt: str, text: str, settings) -> list[tuple[str, dict[str, Any]]]:
    """``mta-feedback convert --from FMT``'s events, normalised as ``replay`` reads them."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.tools.cli", "convert", "--from", fmt, "-"],
        input=text,
        capture_output=True,
        text=True,
        env=settings_env(settings),
        timeout=120,
        check=True,
    )
    replayer = Replayer()
    return [replayer.normalise(json.loads(line)) for line in done.stdout.splitlines() if line]


def test_records_posted_over_http_give_what_convert_and_replay_give(make_settings, tmp_path):
    settings = make_settings()
    tag = uuid.uuid4().hex[:8]
    sparkpost = sparkpost_records(tag, 60)
    kumo = kumo_story(tag, 50)
    events = converted("sparkpost", json.dumps(sparkpost), settings)
    events += converted("kumomta", "\n".join(json.dumps(r) for r in kumo), settings)
    ref = reference(events)
    assert {r["state"] for r in ref["address"].values()} >= {"valid", "quarantined"}
    assert {"sent", "failed"} <= {r["status"] for r in ref["message"].values()}

    worker = WorkerProcess(settings, tmp_path / "worker.log", views=True).start()
    service = ServiceProcess(settings, tmp_path / "serve.log").start()
    try:
        worker.wait_ready()
        half = len(sparkpost) // 2
        for batch in (sparkpost[:half], sparkpost[half:]):
            answer = service.post("/webhooks/sparkpost", json.dumps(batch).encode())
            assert answer.status == 200 and answer.body["bad"] == [], answer
        for record in kumo[:40]:  # as KumoMTA's TSA publisher posts: one per request
            answer = service.post("/publish_log_v1", json.dumps(record).encode())
            assert answer.status == 200 and answer.body["bad"] == [], answer
        lines = "\n".join(json.dumps(r) for r in kumo[40:]).encode()
        answer = service.post("/webhooks/kumomta", lines)
        assert answer.status == 200 and answer.body["bad"] == [], answer

        got = stream_state(settings, ref, timeout=120)
        assert diff(ref, got) == []
        assert_views(settings, ref)
        assert worker.alive() and service.alive()
    finally:
        worker.stop()
        assert service.stop() == 0
    assert "Traceback" not in service.log_text()


def assert_views(settings, ref, timeout: float = 60.0) -> None:
    """The Redis views (what ``mta-feedback status`` shows) agree with the reference."""
    store = ViewStore.from_settings(settings)
    deadline = time.monotonic() + timeout
    while True:
        wrong = [
            mid
            for mid, want in ref["message"].items()
            if (store.read("msg", mid) or {}).get("status") != want["status"]
        ]
        wrong += [
            address
            for address, want in ref["address"].items()
            if (store.read("addr", address) or {}).get("state") != want["state"]
        ]
        wrong += [
            delivery
            for delivery, want in ref["kpi"].items()
            if (store.read("kpi", delivery) or {}).get("sent") != want["sent"]
        ]
        if not wrong or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert wrong == []
    quarantined = {a for a, r in ref["address"].items() if r["state"] == "quarantined"}
    assert quarantined and all(store.is_listed(a) == "quarantined" for a in quarantined)
