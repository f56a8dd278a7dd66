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
