"""What tracked state costs one worker: RSS as the tables grow, and RocksDB's bytes on disk.

    python benchmarks/state_size.py --store rocksdb:// --messages 2000000
    python benchmarks/state_size.py --store memory:// --messages 300000

Produces one ``relayed`` send event per message (and, with ``--deferrals``, a soft
deferral for that share of the messages), each to a recipient of its own, so every message
adds a message and an address to the tables; then one worker drains them. A deferral is a
reputation signal: drained from a backlog, partitions move at different paces and the
control step holds signals until the slowest one catches up (tens of thousands here),
which measures the backlog rather than the state; so the default is none. Each time the
messages table (its ``mta_table_keys`` gauge) passes a mark, a JSON line gives the
worker's RSS. The summary gives the RSS at the last mark over the first (RocksDB's
target: flat within 20%), the RSS growth per million tracked messages between them and,
for RocksDB, the size of the table directories after a full compaction, per tracked
message. Uses the shared broker with its own topics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from streams.runtime.config import Settings
from streams.runtime.producer import EventProducer
from streams.testing.services import free_port
from streams.testing.worker import WorkerProcess, committed_input, worker_table_keys
from streams.tools.bench_group import rss_mb
from streams.tools.stack import Stack

REPLY = "421 4.7.0 [TS01] Messages temporarily deferred due to unexpected volume"


def _produce(settings: Settings, messages: int, deferrals: float) -> int:
    start = int(time.time() * 1000) - 86_400_000
    sent = 0
    with EventProducer(settings) as producer:
        for i in range(messages):
            t = start + i * 20  # a day of event time for 4 million messages
            base = {
                "event_time": t,
                "delivery_id": f"S{i // 100_000}",
                "message_id": f"S{i // 100_000}-{i:09d}",
                "recipient": f"user{i:09d}@d{i % 997}.example",
            }
            producer.send("send", {**base, "event_id": f"s{i}", "kind": "relayed"})
            sent += 1
            if deferrals and i % round(1 / deferrals) == 0:
                retry = {**base, "event_id": f"r{i}", "event_time": t + 5, "kind": "deferred"}
                producer.send("retry", {**retry, "smtp_code": 421, "diagnostic": REPLY})
                sent += 1
            if i and i % 200_000 == 0:
                print(f"produced {i} messages", file=sys.stderr)
    return sent


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _compact(data_dir: Path) -> int:
    """Compact every RocksDB database under ``data_dir`` fully; returns how many."""
    import rocksdict

    dbs = [p.parent for p in data_dir.rglob("CURRENT")]
    for path in dbs:
        db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
        db.compact_range(None, None)
        db.close()
    return len(dbs)


def run(store: str, messages: int, marks: list[int], deferrals: float) -> dict[str, Any]:
    base = Settings.from_env()
    prefix = f"state{int(time.time())}"
    data_dir = Path(base.run_dir) / prefix
    settings = dataclasses.replace(
        base,
        topic_prefix=prefix,
        app_id=prefix,
        store=store,
        data_dir=str(data_dir),
        web_port=free_port(),
    )
    Stack(settings).up()
    total = _produce(settings, messages, deferrals)
    print(f"produced {total} events for {messages} messages", file=sys.stderr)
    worker = WorkerProcess(settings, Path(base.run_dir) / f"{prefix}-worker.log", views=False)
    points: list[dict[str, Any]] = []
    try:
        worker.start().wait_ready(180)
        assert worker.proc is not None
        pid = worker.proc.pid
        pending = sorted(marks)
        started = time.monotonic()
        while pending and time.monotonic() - started < 7200:
            try:
                tracked = worker_table_keys(settings.web_port).get("messages", 0)
            except OSError as exc:  # a worker busy with a commit answers late: next round
                print(f"metrics not read: {exc}", file=sys.stderr)
                continue
            if tracked >= pending[0]:
                point = {
                    "store": store,
                    "mark": pending.pop(0),
                    "tracked_messages": tracked,
                    "input_done": committed_input(settings),
                    "rss_mb": round(rss_mb(pid), 1),
                    "elapsed_s": round(time.monotonic() - started, 1),
                }
                points.append(point)
                print(json.dumps(point), flush=True)
            elif not worker.alive():
                raise RuntimeError(f"worker stopped:\n{worker.tail()}")
            time.sleep(1)
        if pending:
            raise RuntimeError(f"marks {pending} not reached:\n{worker.tail()}")
    finally:
        worker.stop(60)
    first, last = points[0], points[-1]
    summary: dict[str, Any] = {
        "store": store,
        "messages": messages,
        "deferrals": deferrals,
        "rss_first_mb": first["rss_mb"],
        "rss_last_mb": last["rss_mb"],
        "rss_last_over_first": round(last["rss_mb"] / first["rss_mb"], 3),
        "rss_mb_per_million_messages": round(
            (last["rss_mb"] - first["rss_mb"])
            / (last["tracked_messages"] - first["tracked_messages"])
            * 1e6,
            1,
        ),
    }
    if store.startswith("rocksdb"):
        before = _dir_bytes(data_dir)
        summary["rocksdb_databases"] = _compact(data_dir)
        after = _dir_bytes(data_dir)
        summary["disk_bytes_before_compaction"] = before
        summary["disk_bytes_after_compaction"] = after
        # RocksDB's info logs (rolled, at most 3 MB per database) are part of the figure.
        summary["disk_bytes_info_logs"] = sum(
            f.stat().st_size for f in data_dir.rglob("LOG*") if f.is_file()
        )
        summary["disk_bytes_per_tracked_message"] = round(after / last["tracked_messages"], 1)
    shutil.rmtree(data_dir, ignore_errors=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("memory://", "rocksdb://"), default="rocksdb://")
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument(
        "--deferrals", type=float, default=0.0, help="share of messages deferred once (0-1)"
    )
    parser.add_argument(
        "--marks",
        default="",
        help="comma-separated tracked-message counts to sample at (default: 5%%, 25%%, "
        "50%% and 95%% of --messages: RocksDB's key count is an estimate)",
    )
    args = parser.parse_args()
    if args.messages < 20:
        parser.error("--messages must be at least 20")
    if not 0 <= args.deferrals <= 1:
        parser.error("--deferrals must be between 0 and 1")
    marks = [int(m) for m in args.marks.split(",") if m] or [
        args.messages // 20,
        args.messages // 4,
        args.messages // 2,
        args.messages * 95 // 100,
    ]
    print(json.dumps(run(args.store, args.messages, marks, args.deferrals)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
