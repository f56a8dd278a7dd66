"""The Redis views against a real Redis: versions decide, and among equal versions the
later record stands, as it does on the compacted topic."""

from __future__ import annotations

import pytest

from streams.serving.views import ViewStore


def _status(version: int, status: str) -> dict:
    return {"message_id": "M1", "delivery_id": "D1", "status": status, "version": version}


@pytest.mark.redis
def test_older_versions_are_ignored_and_equal_versions_replace(make_settings) -> None:
    settings = make_settings(create_topics=False)
    store = ViewStore.from_settings(settings)
    try:
        store.write("status", [_status(2, "taken_into_account")])
        store.write("status", [_status(1, "failed")])
        assert store.read("msg", "M1")["status"] == "taken_into_account"
        store.write("status", [_status(2, "sent")])
        assert store.read("msg", "M1")["status"] == "sent"
        store.write("status", [_status(3, "failed"), _status(2, "taken_into_account")])
        assert store.read("msg", "M1") == {**_status(3, "failed")}
    finally:
        store.client.delete(store.key("msg", "M1"))


@pytest.mark.redis
def test_each_new_throttle_version_joins_the_history_once_and_scans_skip_it(
    make_settings,
) -> None:
    settings = make_settings(create_topics=False)
    store = ViewStore.from_settings(settings)

    def setting(version: int, mode: str) -> dict:
        return {"key": "group:google", "mode": mode, "max_rate_per_hour": 100, "version": version}

    try:
        store.write("throttle", [setting(1, "backoff"), setting(2, "normal")])
        # A redelivered version and an older one add nothing to the history.
        store.write("throttle", [setting(2, "normal"), setting(1, "backoff")])
        entries = store.client.xrange(store.history_key)
        assert [(e["version"], e["mode"]) for _id, e in entries] == [
            ("1", "backoff"),
            ("2", "normal"),
        ]
        # The stream sits outside the hashes' namespace: a scan of the settings reads hashes.
        assert [r["mode"] for r in store.scan("throttle")] == ["normal"]
    finally:
        store.client.delete(store.key("throttle", "group:google"), store.history_key)
