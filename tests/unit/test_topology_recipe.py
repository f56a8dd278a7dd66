"""docs/architecture.md's recipe for an output topic, followed on a scratch copy of the
package: a throwaway topic is declared, shaped and emitted; replay refuses it until the
topology declares it, then routes it out."""

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


def _replay(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", REPLAY, str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_output_topic_added_by_the_recipe_is_refused_until_declared_then_routed_out(
    tmp_path,
):
    shutil.copytree(ROOT / "streams", tmp_path / "streams")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
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
