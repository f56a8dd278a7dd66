"""docs/architecture.md's recipes for an output topic and an input kind, followed on a
scratch copy of the package: a throwaway output topic is declared, shaped and emitted, and
replay refuses it until the topology declares it, then routes it out; a throwaway input
kind is declared with its schema and the domain's reaction, and replay takes it in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (file, text to find, text to put instead): the recipe's steps 1, 3 and 5.
RECIPE = [
    (
        "streams/pipeline/topics.py",
        '    CLOCK = "clock"\n',
        '    CLOCK = "clock"\n    PROBE = "probe"\n',
    ),
    (
        "streams/pipeline/topics.py",
        "TOPICS: tuple[TopicSpec, ...] = (\n",
        "TOPICS: tuple[TopicSpec, ...] = (\n"
        '    TopicSpec(Topic.PROBE, None, False, "Throwaway"),\n',
    ),
    (
        "streams/pipeline/records.py",
        "def progress_value(",
        "def probe_record(event_id: str) -> Output:\n"
        '    return Output(Topic.PROBE, event_id, {"event_id": event_id})\n\n\n'
        "def progress_value(",
    ),
    (
        "streams/pipeline/feedback.py",
        "        self._address(family, event, q, partition, offset, out)\n",
        "        self._address(family, event, q, partition, offset, out)\n"
        '        out.append(probe_record(event["event_id"]))\n',
    ),
    (
        "streams/pipeline/feedback.py",
        "    address_record,\n",
        "    address_record,\n    probe_record,\n",
    ),
]
# Step 4: the step that emits it declares it.
DECLARE = (
    "streams/pipeline/topology.py",
    "(Topic.STATUS, Topic.ADDRESS, Topic.KPI_PART, Topic.SIGNAL)",
    "(Topic.STATUS, Topic.ADDRESS, Topic.KPI_PART, Topic.SIGNAL, Topic.PROBE)",
)

REPLAY = """
import json, sys
import streams
assert streams.__file__.startswith(sys.argv[1]), streams.__file__
from streams.testing.sample import SampleCampaign
from streams.tools.replay import Replayer
events = SampleCampaign(recipients=5, seed=3).events()
replayer = Replayer()
out = [o for family, event in events for o in replayer.apply(family, event)]
print(json.dumps({"events": len(events), "probes": sum(o.topic == "probe" for o in out)}))
"""


def _edit(root: Path, path: str, find: str, put: str) -> None:
    target = root / path
    text = target.read_text()
    assert text.count(find) == 1, f"the recipe no longer fits {path}: {find!r}"
    target.write_text(text.replace(find, put))


def _copy_package(root: Path) -> None:
    shutil.copytree(ROOT / "streams", root / "streams")
    shutil.copytree(ROOT / "schemas", root / "schemas")


def _replay(root: Path, script: str = REPLAY) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the scratch copy's package, not the installed one."""
    env = {**os.environ, "PYTHONPATH": str(root), "MTA_SCHEMA_DIR": str(root / "schemas")}
    return subprocess.run(
        [sys.executable, "-c", script, str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_output_topic_added_by_the_recipe_is_refused_until_declared_then_routed_out(
    tmp_path,
):
    _copy_package(tmp_path)
    for path, find, put in RECIPE:
        _edit(tmp_path, path, find, put)

    undeclared = _replay(tmp_path)
    assert undeclared.returncode != 0
    assert "TopologyError: step 'ingest' wrote to 'probe'" in undeclared.stderr

    _edit(tmp_path, *DECLARE)
    declared = _replay(tmp_path)
    assert declared.returncode == 0, declared.stderr
    figures = json.loads(declared.stdout)
    assert figures["probes"] == figures["events"] > 0


# The input-kind recipe with a throwaway "ping" family: an MTA saying it picked a message
# up, which the domain takes as "relayed" (steps 1, 3 and 4; step 2 copies a schema).
INPUT_KIND = [
    (
        "streams/pipeline/topics.py",
        '    CLOCK = "clock"\n',
        '    CLOCK = "clock"\n    PING = "ping"\n',
    ),
    (
        "streams/pipeline/topics.py",
        "TOPICS: tuple[TopicSpec, ...] = (\n",
        "TOPICS: tuple[TopicSpec, ...] = (\n"
        '    TopicSpec(Topic.PING, "ping_event", False, "Throwaway input"),\n',
    ),
    (
        "streams/pipeline/topics.py",
        "(Topic.SEND, Topic.BOUNCE, Topic.RETRY)",
        "(Topic.SEND, Topic.BOUNCE, Topic.RETRY, Topic.PING)",
    ),
    (
        "streams/domain/events.py",
        'Family = Literal["send", "bounce", "retry"]',
        'Family = Literal["send", "bounce", "retry", "ping"]',
    ),
]
DOMAIN_REACTION = [
    (
        "streams/domain/recipient/message_status.py",
        '    if family == "send":\n        requested',
        '    if family in ("send", "ping"):\n        requested',
    ),
    (
        "streams/domain/recipient/address_health.py",
        'if family not in ("send", "bounce", "retry"):',
        'if family not in ("send", "bounce", "retry", "ping"):',
    ),
    (
        "streams/domain/recipient/address_health.py",
        '    if family == "send":\n        return Entry(t, event_id, "success")',
        '    if family in ("send", "ping"):\n        return Entry(t, event_id, "success")',
    ),
    (
        "streams/domain/control/reputation.py",
        'if family == "send" and kind != "delivered":',
        'if family in ("send", "ping") and kind != "delivered":',
    ),
    (
        "streams/pipeline/feedback.py",
        'if family == "send" or event["kind"] == "complaint":',
        'if family in ("send", "ping") or event["kind"] == "complaint":',
    ),
]

REPLAY_PING = """
import json, sys
import streams
assert streams.__file__.startswith(sys.argv[1]), streams.__file__
from streams.tools.replay import Replayer
line = {"family": "ping", "event_id": "P1", "event_time": "2026-01-01T00:00:00Z",
        "delivery_id": "D1", "message_id": "M1", "recipient": "m1@example.org",
        "kind": "relayed"}
replayer = Replayer()
replayer.run_lines([json.dumps(line)])
print(json.dumps({"errors": replayer.errors, "state": list(replayer.final_state())}))
"""


def test_an_input_kind_added_by_the_recipe_is_replayed_through_the_domain(tmp_path):
    _copy_package(tmp_path)
    schema = (ROOT / "schemas" / "send_event.avsc").read_text()
    (tmp_path / "schemas" / "ping_event.avsc").write_text(
        schema.replace('"name": "SendEvent"', '"name": "PingEvent"', 1)
    )
    for path, find, put in INPUT_KIND:
        _edit(tmp_path, path, find, put)

    # Without the domain's reaction (step 4) the state machines refuse the family.
    without = _replay(tmp_path, REPLAY_PING)
    assert without.returncode != 0
    assert "unknown event family 'ping'" in without.stderr

    for path, find, put in DOMAIN_REACTION:
        _edit(tmp_path, path, find, put)
    done = _replay(tmp_path, REPLAY_PING)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["errors"] == []
    message = next(r for r in result["state"] if r["type"] == "message")
    assert (message["message_id"], message["status"]) == ("M1", "taken_into_account")
