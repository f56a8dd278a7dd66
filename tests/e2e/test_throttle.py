"""Events in, throttle record out, through the real broker, a worker and the Redis mirror."""

from __future__ import annotations

import json
import time

import pytest
import redis
from factories import event

from streams.runtime.producer import EventProducer
from streams.serving.views import ViewStore
from streams.testing.worker import WorkerProcess

from .helpers import collect

pytestmark = [pytest.mark.broker, pytest.mark.redis, pytest.mark.e2e]


def test_rate_limit_replies_throttle_google_down_and_reach_the_control_topic_and_redis(
    make_settings, tmp_path
):
    settings = make_settings()
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    pubsub = redis.Redis.from_url(settings.redis_url).pubsub()
    pubsub.subscribe(f"{settings.topic_prefix}:throttle")
    try:
        worker.wait_ready()
        with EventProducer(settings) as producer:
            for i in range(5):
                producer.send(
                    "retry",
                    event(
                        f"G{i}",
                        "deferred",
                        i * 1000,
                        recipient=f"user{i}@gmail.com",
                        attempt=1,
                        smtp_code=421,
                        enhanced_status="4.7.28",
                        diagnostic="421-4.7.28 unusual rate of unsolicited mail - gsmtp",
                        mx_host="gmail-smtp-in.l.google.com",
                        sending_ip="192.0.2.10",
                    ),
                )
                producer.send(
                    "send",
                    event(f"Y{i}", "delivered", i * 1000, recipient=f"user{i}@yahoo.com"),
                )
        # The replies name the sending IP: that IP's key towards Google takes them.
        key = "ip_group:192.0.2.10|google"
        latest = collect(settings, "throttle", lambda got: key in got, "key", timeout=60)
        google = latest[key]
        assert google["mode"] == "backoff"
        assert google["max_rate_per_hour"] < 36000
        assert "rate" in google["reason"].lower() or "421" in google["reason"]
        assert not any("yahoo" in key for key in latest)
        store = ViewStore.from_settings(settings)
        deadline = time.monotonic() + 30
        mirrored = None
        while mirrored is None and time.monotonic() < deadline:
            mirrored = store.read("throttle", key)
            time.sleep(0.2)
        assert mirrored is not None
        assert mirrored["max_rate_per_hour"] == google["max_rate_per_hour"]
        notes = []
        while (msg := pubsub.get_message(timeout=1.0)) is not None or not notes:
            if msg and msg["type"] == "message":
                notes.append(json.loads(msg["data"]))
            if time.monotonic() > deadline:
                break
        assert notes, "no pub/sub notification of the change"
    finally:
        pubsub.close()
        worker.stop()
