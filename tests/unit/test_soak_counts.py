"""The soak's key counts: the table gauge read from the worker's /metrics text, and the
plateau test (the last quarter's mean against the third quarter's)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from streams.testing.worker import table_keys

EXPOSITION = """\
# HELP mta_table_keys Keys in each table of this worker
# TYPE mta_table_keys gauge
mta_table_keys{table="addresses"} 1200.0
mta_table_keys{table="messages"} 34567.0
# HELP mta_table_keys_other Not it
# TYPE mta_table_keys_other gauge
mta_table_keys_other{table="messages"} 1.0
"""


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_keys_are_read_per_table() -> None:
    assert table_keys(EXPOSITION) == {"addresses": 1200, "messages": 34567}
    assert table_keys("") == {}


def test_the_port_the_worker_logged_wins(soak: ModuleType) -> None:
    log = "[INFO] metrics and health on port 9111 (/metrics, /healthz, /readyz)\n"
    assert soak.metrics_port(log, 9110) == 9111
    assert soak.metrics_port("Ready\n", 9110) == 9110


def test_a_count_levels_off_within_the_tolerance(soak: ModuleType) -> None:
    def points(third: float, last: float) -> list[tuple[float, float | None]]:
        return [(t, 10.0 * t) for t in range(0, 50, 10)] + [
            (50, third),
            (60, third),
            (70, None),
            (80, last),
            (90, last),
            (100, last),
        ]

    flat = soak.plateau(points(1000, 1000 + 10 * soak.PLATEAU_TOLERANCE_PCT - 1), 100)
    assert flat == {"q3_mean": 1000, "q4_mean": 1099, "change_pct": 9.9, "levelled": True}
    growing = soak.plateau(points(1000, 1200), 100)
    assert growing["levelled"] is False and growing["change_pct"] == 20.0
    assert soak.plateau(points(1000, 800), 100)["levelled"] is False
    assert soak.plateau(points(0, 0), 100)["levelled"] is True
    assert soak.plateau(points(0, 5), 100)["levelled"] is False
    # A soak too short to sample both quarters cannot show a plateau.
    assert soak.plateau([(0, 5.0), (90, 5.0)], 100)["levelled"] is False
