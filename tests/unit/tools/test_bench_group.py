"""``mta-feedback bench --workers N``: its validation and how it tells the group settled."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.tools import cli
from streams.tools.bench_group import group_error, settled_generation, synced_generation


def _synced(generation: int) -> str:
    return (
        "[2026-12-01 02:10:55,015] [8302] [INFO] Successfully synced group bench1 "
        f"with generation {generation} \n"
    )


JOINING = "[2026-12-01 02:10:51,987] [8302] [INFO] (Re-)joining group bench1 \n"


@given(st.integers(-3, 40), st.integers(1, 32))
def test_workers_must_be_between_one_and_the_partition_count(workers, partitions):
    error = group_error(workers, partitions)
    assert (error is None) == (1 <= workers <= partitions)
    if error is not None:
        assert "--workers" in error


def test_the_last_synced_generation_counts():
    assert synced_generation(JOINING) is None
    assert synced_generation(_synced(0) + JOINING + _synced(1) + JOINING) == 1


def test_the_group_settles_when_every_member_synced_the_same_generation():
    first, joined_late = _synced(0), JOINING
    assert settled_generation([first]) == 0
    assert settled_generation([first, joined_late]) is None
    assert settled_generation([first + JOINING, joined_late + _synced(1)]) is None
    assert settled_generation([first + JOINING + _synced(1), joined_late + _synced(1)]) == 1


@pytest.mark.parametrize(
    ("argv", "partitions", "message"),
    [
        (["--workers", "0"], "4", "--workers must be at least 1"),
        (["--workers", "3"], "2", "needs at least 3 partitions per topic; MTA_PARTITIONS is 2"),
    ],
)
def test_bad_worker_counts_stop_before_any_work(monkeypatch, capsys, argv, partitions, message):
    # Nothing listens on port 1: had the bench started, it would fail otherwise.
    monkeypatch.setenv("MTA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("MTA_PARTITIONS", partitions)
    assert cli.main(["bench", "--events", "100", *argv]) == 2
    assert message in capsys.readouterr().err
