"""The wheel ships every package and every Avro schema, and an installed copy finds its
schemas as package data (``streams.schemas``), away from the repository."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_ships_the_schemas_and_every_package(tmp_path):
    # Built from a copy: an in-tree build would leave build/ and egg-info in the repository.
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("streams", "schemas"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    wheel = next(tmp_path.glob("mta_feedback-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    schemas = sorted((ROOT / "schemas").rglob("*.avsc"))
    assert len(schemas) >= 20  # ten current schemas and their history
    for path in schemas:
        assert f"streams/schemas/{path.relative_to(ROOT / 'schemas').as_posix()}" in names
    for path in (ROOT / "streams").rglob("*.py"):  # a package missing from pyproject's list
        assert path.relative_to(ROOT).as_posix() in names

    target = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {k: v for k, v in os.environ.items() if k != "MTA_SCHEMA_DIR"}
    env["PYTHONPATH"] = str(target)
    probe = "from streams.runtime.codec import Codec, schema_dir; Codec(); print(schema_dir())"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == str(target / "streams" / "schemas")
