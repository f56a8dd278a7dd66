"""Tombstones and TTLs in the Redis views against a real Redis: a tombstone deletes the
hash and the address's set and index entries and leaves a marker; a record at or before
the marker in both event time and version stays out, a later one (the key reborn) comes
back; a tombstone older than the hash is ignored; final messages and valid addresses
expire, nothing else does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from streams.serving.retirement import Tombstone
from streams.serving.views import ViewStore, index_member

pytestmark = pytest.mark.redis

ADDRESS = "jane@example.org"


@pytest.fixture
def store(make_settings) -> Iterator[ViewStore]:
    store = ViewStore.from_settings(make_settings(create_topics=False))
    yield store
    keys = list(store.client.scan_iter(match=f"{store.prefix}:*"))
    if keys:
        store.client.delete(*keys)


def status(version: int, event_time: int, state: str = "sent") -> dict[str, Any]:
    return {
        "message_id": "M1",
        "delivery_id": "D1",
        "status": state,
        "event_time": event_time,
        "version": version,
    }


def address(version: int, event_time: int, state: str = "valid") -> dict[str, Any]:
    return {"address": ADDRESS, "state": state, "event_time": event_time, "version": version}


def listed(store: ViewStore, state: str) -> tuple[bool, list[str]]:
    """Whether the address is in the state's set, and the state's index."""
    members = store.client.zrange(store.index_key(state), 0, -1)
    return bool(store.client.sismember(f"{store.prefix}:{state}", ADDRESS)), members


def test_an_address_tombstone_deletes_the_hash_set_and_index_and_leaves_a_marker(
    store: ViewStore,
) -> None:
    store.write("address", [address(3, 1_000, "quarantined")])
    assert listed(store, "quarantined") == (True, [index_member(ADDRESS)])
    store.write("address", [Tombstone(ADDRESS, version=3, event_time=2_000)])
    assert store.read("addr", ADDRESS) is None
    assert listed(store, "quarantined") == (False, [])
    gone = store.gone_key("addr", ADDRESS)
    assert store.client.hgetall(gone) == {"event_time": "2000", "version": "3"}
    assert store.expiry.marker_s - 5 <= store.client.ttl(gone) <= store.expiry.marker_s


def test_a_record_of_the_retired_life_stays_out_a_later_one_comes_back(
    store: ViewStore,
) -> None:
    store.write("status", [status(2, 1_000), Tombstone("M1", version=2, event_time=2_000)])
    # Late or replayed records of the retired life: at or before the tombstone in both.
    store.write("status", [status(2, 1_500), status(1, 2_000, "failed")])
    assert store.read("msg", "M1") is None
    # Seen again after the tombstone: it goes on from the tombstone's version, even in the
    # same millisecond.
    store.write("status", [status(3, 2_000, "taken_into_account")])
    assert store.read("msg", "M1")["status"] == "taken_into_account"

    store.write("address", [address(4, 1_000), Tombstone(ADDRESS, version=4, event_time=2_000)])
    store.write("address", [address(4, 1_999, "denylisted")])
    assert store.read("addr", ADDRESS) is None
    assert listed(store, "denylisted") == (False, [])
    # A key whose versions started again is newer by its event time.
    store.write("address", [address(1, 3_000, "denylisted")])
    assert store.read("addr", ADDRESS)["state"] == "denylisted"
    assert listed(store, "denylisted") == (True, [index_member(ADDRESS)])


def test_retire_and_rebirth_in_one_batch_apply_in_order(store: ViewStore) -> None:
    store.write(
        "status",
        [
            status(3, 1_000),
            Tombstone("M1", version=3, event_time=2_000),
            status(4, 2_500, "taken_into_account"),
        ],
    )
    assert store.read("msg", "M1")["version"] == 4


def test_a_tombstone_older_than_the_hash_keeps_it(store: ViewStore) -> None:
    store.write("status", [status(5, 1_000)])
    store.write("status", [Tombstone("M1", version=4, event_time=2_000)])
    assert store.read("msg", "M1")["version"] == 5
    assert store.client.exists(store.gone_key("msg", "M1")) == 0
    # A reborn hash (versions restarted, a later event time) outlives a replayed tombstone.
    store.write("address", [address(1, 3_000, "quarantined")])
    store.write("address", [Tombstone(ADDRESS, version=6, event_time=2_000)])
    assert store.read("addr", ADDRESS)["state"] == "quarantined"
    assert listed(store, "quarantined")[0]


def test_a_tombstone_without_headers_deletes_and_leaves_no_marker(store: ViewStore) -> None:
    store.write("status", [status(9, 1_000)])
    store.write("status", [Tombstone("M1", event_time=2_000)])
    assert store.read("msg", "M1") is None
    assert store.client.exists(store.gone_key("msg", "M1")) == 0
    store.write("status", [status(9, 1_000), Tombstone("M1")])
    assert store.read("msg", "M1") is None


def test_the_marker_keeps_the_newest_tombstone(store: ViewStore) -> None:
    gone = store.gone_key("msg", "M1")
    store.write("status", [Tombstone("M1", version=2, event_time=2_000)])
    store.write("status", [Tombstone("M1", version=1, event_time=3_000)])
    assert store.client.hgetall(gone) == {"event_time": "2000", "version": "2"}
    store.write("status", [Tombstone("M1", version=2, event_time=2_500)])
    assert store.client.hgetall(gone) == {"event_time": "2500", "version": "2"}
    store.write("status", [Tombstone("M1", version=5, event_time=2_400)])
    assert store.client.hgetall(gone) == {"event_time": "2400", "version": "5"}


def test_final_messages_and_valid_addresses_expire_nothing_else(store: ViewStore) -> None:
    ttl = store.client.ttl
    msg, addr = store.key("msg", "M1"), store.key("addr", ADDRESS)
    expiry = store.expiry
    store.write("status", [status(1, 1_000, "taken_into_account")])
    assert ttl(msg) == -1
    for version, state in ((2, "sent"), (3, "failed")):
        store.write("status", [status(version, 1_000 + version, state)])
        assert expiry.message_s - 5 <= ttl(msg) <= expiry.message_s, state

    store.write("address", [address(1, 1_000)])
    assert expiry.address_s - 5 <= ttl(addr) <= expiry.address_s
    for version, state in ((2, "quarantined"), (3, "valid"), (4, "denylisted"), (5, "with_errors")):
        store.write("address", [address(version, 1_000 + version, state)])
        assert (ttl(addr) == -1) == (state != "valid"), state

    store.write("kpi", [{"delivery_id": "D1", "sent": 3, "version": 1}])
    store.write("throttle", [{"key": "group:google", "mode": "normal", "version": 1}])
    store.write("reputation", [{"key": "group:google", "event_time": 1_000}])
    for kind, key in (("kpi", "D1"), ("throttle", "group:google"), ("reputation", "group:google")):
        assert ttl(store.key(kind, key)) == -1, kind


def test_a_tombstone_on_a_topic_whose_keys_never_retire_is_ignored(store: ViewStore) -> None:
    store.write("kpi", [{"delivery_id": "D1", "sent": 3, "version": 1}])
    assert store.write("kpi", [Tombstone("D1", version=9, event_time=9_000)]) == 0
    assert store.read("kpi", "D1")["sent"] == 3
