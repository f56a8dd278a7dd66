"""One memory budget for every RocksDB database of a worker.

Faust opens one RocksDB database per table partition, each with its own block cache and
memtables: a worker's RSS then grows with the number of partitions it holds and with its
state, until every database's cache and memtables are full. Here every database of the
worker shares one block cache, and the memtables are charged to that cache (a write buffer
manager), as are the index and filter blocks, which RocksDB otherwise keeps outside any
cache and grows with the data. What RocksDB holds in memory is then about
``MTA_ROCKSDB_CACHE_MB``, however many partitions and keys the worker has.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.stores.rocksdb import RocksDBOptions


class SharedBudget:
    """The cache and write buffer manager that a worker's databases share."""

    def __init__(self, cache_bytes: int, write_buffer_bytes: int) -> None:
        import rocksdict  # the optional RocksDB extra: only a worker that uses it loads it

        self.cache = rocksdict.Cache(cache_bytes)
        # Memtables are charged to the cache: half of it (one memtable if that is more),
        # so that reads keep the rest. No stall: a write that finds it full makes a flush.
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            max(cache_bytes // 2, write_buffer_bytes), False, self.cache
        )

    def usage_bytes(self) -> int:
        """What the cache holds now, memtables included."""
        return int(self.cache.get_usage())


class SharedOptions(RocksDBOptions):
    """Faust's RocksDB options, with the block cache and memtable budget of ``budget``, and
    info logs that roll: RocksDB's own default is one ``LOG`` file per database that grows
    until the worker restarts (12 MB in 10 minutes for a busy table partition, 80% of the
    store's bytes on disk), so that at most ``log_files_kept`` older files of
    ``log_file_bytes`` stay beside it."""

    def __init__(
        self,
        budget: SharedBudget,
        log_file_bytes: int = 1 << 20,
        log_files_kept: int = 2,
        **options: Any,
    ) -> None:
        super().__init__(**options, use_rocksdict=True)
        self.budget = budget
        self.log_file_bytes = log_file_bytes
        self.log_files_kept = log_files_kept

    def as_options(self) -> Any:
        import rocksdict

        db_options = super().as_options()
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(self.budget.cache)
        table.set_cache_index_and_filter_blocks(True)
        # Level-0 files are read on every lookup: their index and filter stay in the cache.
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        db_options.set_block_based_table_factory(table)
        db_options.set_write_buffer_manager(self.budget.write_buffers)
        db_options.set_max_log_file_size(self.log_file_bytes)
        db_options.set_keep_log_file_num(self.log_files_kept)
        return db_options


def share_budget(table: faust.Table, budget: SharedBudget, options: dict[str, Any]) -> None:
    """Make ``table``'s RocksDB store open its databases within ``budget``."""
    store = table.data
    store.rocksdb_options = SharedOptions(budget, **options)  # type: ignore[attr-defined]
