"""Every released version of each schema is kept in schemas/history/<stem>/v<N>.avsc, and
the current schema stays compatible with all of them, as its subject's registry level says:
inputs BACKWARD (the current schema reads what every older version wrote), outputs FORWARD
(every older version reads what the current schema writes). Checked with fastavro on
random records, transitively (every version, not only the last), since confluent-kafka's
mock registry checks no compatibility."""

import io
import json
import random

import fastavro
import pytest
from fastavro.utils import generate_many

from streams.pipeline.topics import SCHEMA_FILES
from streams.runtime.codec import (
    SINGLE_OBJECT_MAGIC,
    Codec,
    compatibility_level,
    load_schema_json,
    schema_fingerprint,
    schema_history,
)

SAMPLES = 200
CASES = [
    (name, version, old)
    for name, stem in SCHEMA_FILES.items()
    for version, old in enumerate(schema_history(stem), start=1)
]


def unreadable(writer: dict, reader: dict) -> list[str]:
    """Why records written with ``writer`` cannot all be read with ``reader`` (none: they
    can): a reader field the writer lacks needs a default, and random records written with
    the writer must resolve to the reader (enum symbols, types, names)."""
    problems = [
        f"field {field['name']!r} missing from the writer and without a default"
        for field in reader["fields"]
        if field["name"] not in {f["name"] for f in writer["fields"]} and "default" not in field
    ]
    parsed_writer = fastavro.parse_schema(json.loads(json.dumps(writer)))
    parsed_reader = fastavro.parse_schema(json.loads(json.dumps(reader)))
    random.seed(0)  # fastavro's generator uses the random module: the same records each run
    for record in generate_many(parsed_writer, SAMPLES):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed_writer, record)
        buf.seek(0)
        try:
            fastavro.schemaless_reader(buf, parsed_writer, parsed_reader)
        except Exception as exc:
            problems.append(f"a record is unreadable: {type(exc).__name__}: {exc}")
            break
    return problems


def incompatibilities(name: str, current: dict, history: list[dict]) -> list[str]:
    """The current schema of ``name`` against every released version, in the direction
    of its registry compatibility level."""
    level = compatibility_level(name)
    problems = []
    for version, old in enumerate(history, start=1):
        writer, reader = (old, current) if level == "BACKWARD" else (current, old)
        problems += [f"{level} with v{version}: {p}" for p in unreadable(writer, reader)]
    return problems


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_the_history_ends_with_the_current_schema(name):
    history = schema_history(SCHEMA_FILES[name])
    assert history, f"schemas/history/{SCHEMA_FILES[name]}/v1.avsc is missing"
    assert history[-1] == load_schema_json(name), (
        f"{SCHEMA_FILES[name]}.avsc changed: add it as the next version in "
        f"schemas/history/{SCHEMA_FILES[name]}/"
    )


@pytest.mark.parametrize(("name", "version", "old"), CASES, ids=[f"{n}-v{v}" for n, v, _ in CASES])
def test_the_current_schema_is_compatible_with_each_version(name, version, old):
    assert incompatibilities(name, load_schema_json(name), [old]) == []


def test_the_levels_are_backward_for_inputs_and_forward_for_outputs():
    levels = {name: compatibility_level(name) for name in SCHEMA_FILES}
    assert {n for n, level in levels.items() if level == "BACKWARD"} == {
        "send",
        "bounce",
        "retry",
        "operator",
    }
    assert {n for n, level in levels.items() if level == "FORWARD"} == {
        "status",
        "address",
        "kpi",
        "reputation",
        "throttle",
        "dlq",
    }


def _with_field(schema: dict, field: dict) -> dict:
    changed = json.loads(json.dumps(schema))
    changed["fields"].append(field)
    return changed


def _without_field(schema: dict, name: str) -> dict:
    changed = json.loads(json.dumps(schema))
    changed["fields"] = [f for f in changed["fields"] if f["name"] != name]
    return changed


def test_the_check_catches_incompatible_changes():
    send, status = load_schema_json("send"), load_schema_json("status")
    send_history, status_history = schema_history("send_event"), schema_history("status_change")
    # An input gains a required field: records of older producers lack it.
    tenant = {"name": "tenant", "type": "string", "doc": "d"}
    problems = incompatibilities("send", _with_field(send, tenant), send_history)
    assert problems[0] == (
        "BACKWARD with v1: field 'tenant' missing from the writer and without a default"
    )
    assert "No default value for field tenant" in problems[1]  # the records say it too
    # The same field with a default is a compatible change.
    optional = {"name": "tenant", "type": ["null", "string"], "default": None, "doc": "d"}
    assert incompatibilities("send", _with_field(send, optional), send_history) == []
    # An output drops a field older consumers need (no default in their schema).
    problems = incompatibilities("status", _without_field(status, "message_id"), status_history)
    assert problems[0] == (
        "FORWARD with v1: field 'message_id' missing from the writer and without a default"
    )
    # An output writes an enum symbol older consumers do not know.
    grown = json.loads(json.dumps(status))
    for field in grown["fields"]:
        if field["name"] == "status":
            field["type"]["symbols"] = [*field["type"]["symbols"], "archived"]
    problems = incompatibilities("status", grown, status_history)
    assert problems and "unreadable" in problems[0]
    # A retyped input field cannot read what older producers wrote.
    retyped = json.loads(json.dumps(send))
    for field in retyped["fields"]:
        if field["name"] == "message_id":
            field["type"] = "int"
    assert incompatibilities("send", retyped, send_history)


@pytest.mark.parametrize(
    ("name", "version", "old"),
    [c for c in CASES if compatibility_level(c[0]) == "BACKWARD"],
    ids=[f"{n}-v{v}" for n, v, _ in CASES if compatibility_level(n) == "BACKWARD"],
)
def test_the_codec_decodes_inputs_written_with_every_version(name, version, old):
    parsed = fastavro.parse_schema(json.loads(json.dumps(old)))
    random.seed(version)
    codec = Codec()
    for record in generate_many(parsed, 20):
        buf = io.BytesIO()
        buf.write(SINGLE_OBJECT_MAGIC + schema_fingerprint(old))
        fastavro.schemaless_writer(buf, parsed, record)
        decoded = codec.decode(name, buf.getvalue())
        assert set(decoded) == {f["name"] for f in load_schema_json(name)["fields"]}
