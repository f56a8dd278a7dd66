"""The worker phases of ``mta-feedback bench``: one worker, or N in one consumer group
(``--workers N``), over the pre-loaded topics, with the process and machine figures.

The N workers share the app id (one group), each with a data directory and web port of its
own, as workers on separate machines would. They are started together, so that they
usually join the group's first generation. The rate is measured from the first committed
offset seen once every worker has synced the same generation to the last, over the group's
committed offsets: start-up and any rebalance while they join are left out. CPU is the sum
over the workers; so are the RSS figures (the group's footprint).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

from streams.runtime.config import Settings
from streams.runtime.gc_tuning import TRIM_INTERVAL_S
from streams.testing.services import free_port
from streams.testing.worker import WorkerProcess, committed_input, signals_left

# aiokafka's line once a member has its assignment of a generation.
_SYNCED = re.compile(r"Successfully synced group \S+ with generation (\d+)")


def group_error(workers: int, partitions: int) -> str | None:
    """Why ``workers`` workers cannot share topics of ``partitions`` partitions, or None."""
    if workers < 1:
        return f"--workers must be at least 1 (got {workers})"
    if workers > partitions:
        # A worker without an input partition would idle: the figure would mislead.
        return (
            f"--workers {workers} needs at least {workers} partitions per topic; "
            f"MTA_PARTITIONS is {partitions}"
        )
    return None


def synced_generation(log: str) -> int | None:
    """The last group generation a worker's log says it synced, or None."""
    found = _SYNCED.findall(log)
    return int(found[-1]) if found else None


def settled_generation(logs: list[str]) -> int | None:
    """The generation every member synced last, or None while any differs or has none."""
    generations = {synced_generation(log) for log in logs}
    if len(generations) != 1:
        return None
    return generations.pop()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs so far, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


class Run(NamedTuple):
    eps: float
    cpu_ms_per_1k: float  # workers' CPU per 1,000 events: steadier than eps on a shared machine
    start_rss_mb: float  # summed over the workers, as the two RSS figures below
    workers: list[WorkerProcess]
    # RSS (MB) once the backlog is done and the workers have settled (the pipeline's).
    settled_rss_mb: float = 0.0

    def peak_rss_total_mb(self) -> float:
        """The workers' peak RSS so far, summed (each its own peak)."""
        return sum(peak_rss_mb(_pid(w)) for w in self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def _pid(worker: WorkerProcess) -> int:
    assert worker.proc is not None
    return worker.proc.pid


def _member(settings: Settings, index: int) -> Settings:
    """The settings of worker ``index``: the first keeps the bench's, the others get a data
    directory under it (RocksDB locks its directories) and a web port of their own."""
    if index == 0:
        return settings
    return dataclasses.replace(
        settings, data_dir=str(Path(settings.data_dir) / f"w{index}"), web_port=free_port()
    )


def run(
    settings: Settings,
    total: int,
    log: Path,
    module: str | None = None,
    workers: int = 1,
    broker_pid: int | None = None,
) -> Run:
    """Events/s and CPU per event of ``workers`` workers in one group (the pipeline's, or
    another Faust worker ``module``) over the pre-loaded topics, and their RSS (MB) before
    any. ``log`` names the first worker's log; the others add ``-w1``, ``-w2``..."""
    procs = [
        WorkerProcess(
            _member(settings, i),
            log if i == 0 else log.with_name(f"{log.stem}-w{i}{log.suffix}"),
            views=False,
            module=module,
        ).start()
        for i in range(workers)
    ]
    try:
        return _measure(settings, total, log, module, procs, broker_pid)
    except BaseException:
        for worker in procs:
            worker.stop()
        raise


def _measure(
    settings: Settings,
    total: int,
    log: Path,
    module: str | None,
    procs: list[WorkerProcess],
    broker_pid: int | None,
) -> Run:
    for worker in procs:
        worker.wait_ready(120)
    pids = [_pid(w) for w in procs]
    start_rss = sum(rss_mb(pid) for pid in pids)
    generation = None
    first_at = None
    done = 0
    deadline = time.monotonic() + 1800
    while done < total and time.monotonic() < deadline:
        done = committed_input(settings)
        if generation is None:
            generation = settled_generation([w.log_text() for w in procs])
        if first_at is None and generation is not None and done > 0:
            first_at, first_done = time.monotonic(), done
            first_cpu = sum(cpu_s(pid) for pid in pids)
            first_busy = machine_busy()
            first_broker = cpu_s(broker_pid) if broker_pid else 0.0
        time.sleep(0.25)
    if first_at is None or done < total:
        tails = "\n".join(w.tail() for w in procs)
        raise RuntimeError(f"{log.name}: processed {done} of {total} events:\n{tails}")
    if done == first_done:
        raise RuntimeError(
            f"all {total} events were committed before the group of {len(procs)} settled, "
            "or at once: too few to time (raise --events)"
        )
    elapsed = time.monotonic() - first_at
    eps = (done - first_done) / elapsed
    used = sum(cpu_s(pid) for pid in pids) - first_cpu
    busy_after = machine_busy()
    busy = (busy_after[0] - first_busy[0]) / max(1, busy_after[1] - first_busy[1])
    broker = f", broker {(cpu_s(broker_pid) - first_broker) / elapsed:.2f}" if broker_pid else ""
    last = settled_generation([w.log_text() for w in procs])
    print(
        f"{len(procs)} worker(s), group generation {generation}"
        + ("" if last == generation else f" then {last} (a rebalance while timed)")
        + f": cores used by the workers {used / elapsed:.2f}{broker}; "
        f"machine {busy * 100:.0f}% busy ({os.cpu_count()} cores)",
        file=sys.stderr,
    )
    settled = 0.0
    if module is None:
        # The control step reads the signals the input made after it: its backlog is the
        # backlog's too. Then output buffers drain after the last commit, and a worker gives
        # the freed heap back every TRIM_INTERVAL_S: what stays is what the tables hold.
        drained_at = time.monotonic()
        left = signals_left(settings)
        while left and time.monotonic() - drained_at < 600:
            time.sleep(1)
            left = signals_left(settings)
        print(
            f"control step: {left} signal records left "
            f"{time.monotonic() - drained_at:.0f} s after the input was committed",
            file=sys.stderr,
        )
        time.sleep(TRIM_INTERVAL_S + 2)
        settled = sum(rss_mb(pid) for pid in pids)
    cpu = used / (done - first_done) * 1e6
    return Run(eps, cpu, start_rss, procs, settled)
