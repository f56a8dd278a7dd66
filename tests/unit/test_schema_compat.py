"""Every schema change must be BACKWARD compatible with the previous commit's version:
fields added with defaults, none removed without a default, and records written with the
old version must be readable with the new one."""

import io
import json
import subprocess
from pathlib import Path

import fastavro
import pytest
from fastavro.utils import generate_many

from streams.pipeline.topics import SCHEMA_FILES
from streams.runtime.codec import schema_dir

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def _bases() -> list[str]:
    """HEAD (for an uncommitted change) and HEAD~1 (the previous commit of main)."""
    return [rev for rev in ("HEAD", "HEAD~1") if _git("rev-parse", "--verify", "-q", rev)]


def _old_versions() -> list[tuple[str, str, dict]]:
    out = []
    for rev in _bases():
        for stem in SCHEMA_FILES.values():
            text = _git("show", f"{rev}:schemas/{stem}.avsc")
            if text:
                out.append((rev, stem, json.loads(text)))
    return out


OLD = _old_versions()


def check_backward(old: dict, new: dict) -> list[str]:
    problems = []
    old_fields = {f["name"]: f for f in old["fields"]}
    new_fields = {f["name"]: f for f in new["fields"]}
    for name, field in new_fields.items():
        if name not in old_fields and "default" not in field:
            problems.append(f"field {name!r} added without a default")
    for name, field in old_fields.items():
        if name not in new_fields and "default" not in field:
            problems.append(f"field {name!r} removed but had no default")
    if not problems:
        writer, reader = fastavro.parse_schema(old), fastavro.parse_schema(new)
        for record in generate_many(writer, 20):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer, record)
            buf.seek(0)
            try:
                fastavro.schemaless_reader(buf, writer, reader)
            except Exception as exc:
                problems.append(f"old record unreadable: {exc}")
                break
    return problems


@pytest.mark.skipif(not OLD, reason="no previous commit with schemas (first commit)")
@pytest.mark.parametrize(("rev", "stem", "old"), OLD, ids=[f"{r}:{s}" for r, s, _ in OLD])
def test_schema_is_backward_compatible(rev, stem, old):
    new = json.loads((schema_dir() / f"{stem}.avsc").read_text())
    assert check_backward(old, new) == []


def test_the_check_catches_an_incompatible_change():
    old = json.loads((schema_dir() / "send_event.avsc").read_text())
    added = json.loads(json.dumps(old))
    added["fields"].append({"name": "tenant", "type": "string"})
    assert check_backward(old, added) == ["field 'tenant' added without a default"]
    removed = json.loads(json.dumps(old))
    removed["fields"] = [f for f in removed["fields"] if f["name"] != "message_id"]
    assert check_backward(old, removed) == ["field 'message_id' removed but had no default"]
    retyped = json.loads(json.dumps(old))
    for f in retyped["fields"]:
        if f["name"] == "message_id":
            f["type"] = "int"
    assert check_backward(old, retyped)


def test_every_field_is_documented():
    for stem in SCHEMA_FILES.values():
        schema = json.loads((schema_dir() / f"{stem}.avsc").read_text())
        assert schema.get("doc"), stem
        for field in schema["fields"]:
            assert field.get("doc"), f"{stem}.{field['name']}"
