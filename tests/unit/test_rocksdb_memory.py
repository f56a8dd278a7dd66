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


def _log_bytes(path: Path) -> list[int]:
    return [f.stat().st_size for f in path.iterdir() if f.name.startswith("LOG")]


@pytest.mark.parametrize("rolled", [True, False])
def test_info_logs_roll_and_only_a_few_are_kept(tmp_path: Path, rolled: bool) -> None:
    budget = SharedBudget(8 * MB, 1 * MB)
    # Upstream's default: no size limit, one LOG that grows until the database reopens.
    limits = {"log_file_bytes": 16 << 10, "log_files_kept": 2} if rolled else {"log_file_bytes": 0}
    db = SharedOptions(budget, **limits).open(tmp_path / "p0")
    for i in range(300):  # every flush writes a few lines to the info log
        db[f"{i:08d}".encode()] = b"v"
        db.flush()
    db.close()
    logs = _log_bytes(tmp_path / "p0")
    if rolled:
        assert len(logs) <= 3 and all(size <= 32 << 10 for size in logs)
    else:
        assert len(logs) == 1 and logs[0] > 3 * (32 << 10)
