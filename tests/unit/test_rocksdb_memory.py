"""Every RocksDB database of a worker within one memory budget (real RocksDB, on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("rocksdict")

from streams.runtime.rocksdb_memory import SharedBudget, SharedOptions

MB = 1 << 20


def test_databases_share_one_cache_and_it_stays_within_its_capacity(tmp_path: Path) -> None:
    budget = SharedBudget(8 * MB, 1 * MB)
    options = SharedOptions(budget, write_buffer_size=1 * MB, max_write_buffer_number=2)
    dbs = [options.open(tmp_path / f"p{i}") for i in range(6)]
    value = bytes(range(200))
    for n, db in enumerate(dbs):
        for i in range(20_000):
            db[f"{n}:{i:08d}".encode()] = value
    # Memtables of six databases (about 4 MB each here) are charged to the one cache.
    assert 0 < budget.usage_bytes() <= 8 * MB * 1.1
    for n, db in enumerate(dbs):
        for i in range(0, 20_000, 997):
            assert db[f"{n}:{i:08d}".encode()] == value
    assert budget.usage_bytes() <= 8 * MB * 1.1
    for db in dbs:
        db.close()
