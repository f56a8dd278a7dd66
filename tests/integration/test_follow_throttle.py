"""``mta-feedback follow-throttle`` as a subprocess against the real broker: throttle records
produced to a throttle topic of a unique prefix, printed as JSON lines, and applied to a
stand-in ``pmta`` (a script that records its arguments) and an included fragment file."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streams.adapters import pmta_control as pc
from streams.domain.control.mx_rules import load_mx_rules
from streams.runtime.codec import Codec
from streams.testing.worker import settings_env

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "streams.tools.cli", "follow-throttle"]
FAKE_PMTA = """#!/bin/sh
# Stands in for PowerMTA's pmta: records its arguments; fails while FAIL exists.
if [ -e "{dir}/FAIL" ]; then echo "pmta: cannot talk to pmtad" >&2; exit 3; fi
echo "$*" >> "{dir}/calls"
"""


def record(key, mode, rate, conns, msgs, version, until=None, reason="test"):
    return {
        "event_id": f"{key}:{version}",
        "event_time": int(time.time() * 1000),
        "key": key,
        "scope": key.split(":", 1)[0],
        "mode": mode,
        "max_rate_per_hour": rate,
        "max_connections": conns,
        "max_messages_per_connection": msgs,
        "retry_interval_s": 900,
        "suspended_until": until,
        "reason": reason,
        "version": version,
    }


def produce(settings, *values):
    codec = Codec()
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for value in values:
        raw = value if isinstance(value, bytes) else codec.encode("throttle", value)
        key = b"junk" if isinstance(value, bytes) else value["key"].encode()
        producer.produce(settings.topic("throttle"), key=key, value=raw)
    assert producer.flush(30) == 0


@pytest.fixture
def fake_pmta(tmp_path):
    script = tmp_path / "pmta"
    script.write_text(FAKE_PMTA.format(dir=tmp_path))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def calls(tmp_path):
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def run_once(settings, *args):
    return subprocess.run(
        [*CLI, *args, "--once"],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_json_once_prints_the_current_setting_of_every_key(make_settings):
    settings = make_settings()
    until = int(time.time() * 1000) + 3_600_000
    produce(
        settings,
        record("group:google", "backoff", 18000, 10, 25, 1),
        b"not avro at all",
        record("group:google", "suspended", 9000, 5, 12, 2, until=until),
        record("group:google", "backoff", 30000, 15, 40, 1),  # older version: ignored
        record("ip_group:192.0.2.1|yahoo", "warmup", 50, 2, 20, 1),
    )
    done = run_once(settings, "--emit", "json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["key"], x["version"], x["mode"]) for x in lines] == [
        ("group:google", 2, "suspended"),
        ("ip_group:192.0.2.1|yahoo", 1, "warmup"),
    ]
    google, yahoo_ip = lines
    assert google["domains"] == ["gmail.com", "googlemail.com"]
    assert google["max_rate_per_hour"] == 9000
    assert google["suspended_until"] == pc.iso(until)
    assert yahoo_ip["ip"] == "192.0.2.1"
    assert yahoo_ip["patterns"] == ["yahoo.*", "aol.*"]
    assert "skipped: cannot decode (undecodable)" in done.stderr


def test_pmta_once_printed_or_applied_runs_the_commands_and_writes_the_fragment(
    make_settings, fake_pmta, tmp_path
):
    settings = make_settings()
    until = int(time.time() * 1000) + 3_600_000
    records = [
        record("group:yahoo", "suspended", 9000, 5, 10, 3, until=until),
        record("ip_group:192.0.2.1|google", "backoff", 600, 2, 20, 1),
        record("domain:example.org", "normal", 3600, 10, 100, 2),  # back at baseline
    ]
    produce(settings, *records)
    include = tmp_path / "etc" / "mta-feedback.conf"
    include.parent.mkdir()
    args = ["--emit", "pmta", "--pmta-bin", str(fake_pmta), "--pmta-include", str(include)]
    args += ["--vmta-map", "192.0.2.1=vmta-1"]
    expected_calls = [
        "reload",
        "pause queue aim.com/*",
        "pause queue aol.com/*",
        "set queue --mode=normal example.org/*",
        "resume queue example.org/*",
        "set queue --mode=backoff gmail.com/vmta-1",
        "resume queue gmail.com/vmta-1",
        "set queue --mode=backoff googlemail.com/vmta-1",
        "resume queue googlemail.com/vmta-1",
        "pause queue rocketmail.com/*",
        "pause queue ymail.com/*",
    ]
    expected_text = pc.render_fragment(
        [pc.Setting.from_record(r) for r in records], load_mx_rules()
    )

    # Printed: a shell script that does what --apply does.
    printed = run_once(settings, *args)
    assert printed.returncode == 0, printed.stderr
    assert not include.exists() and calls(tmp_path) == []
    subprocess.run(["sh", "-e"], input=printed.stdout, text=True, check=True, timeout=60)
    assert calls(tmp_path) == expected_calls
    assert include.read_text() == expected_text

    include.unlink()
    (tmp_path / "calls").unlink()
    applied = run_once(settings, *args, "--apply")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == ""
    assert calls(tmp_path) == expected_calls
    text = include.read_text()
    assert text == expected_text
    for domain in ("aim.com", "aol.com", "rocketmail.com", "ymail.com"):
        assert f"<domain {domain}>\n    # group:yahoo v3 suspended: test\n" in text
    assert "source-ip-max-msg-rate 192.0.2.1/32 600/h" in text
    assert "example.org" not in text
    assert sorted(p.name for p in include.parent.iterdir()) == ["mta-feedback.conf"]


def wait_for(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_following_resumes_at_the_end_of_a_suspension_and_retries_failed_commands(
    make_settings, fake_pmta, tmp_path
):
    settings = make_settings()
    include = tmp_path / "mta-feedback.conf"
    log_path = tmp_path / "follower.log"
    args = ["--emit", "pmta", "--apply", "--pmta-bin", str(fake_pmta)]
    args += ["--pmta-include", str(include)]
    with log_path.open("w") as log:
        follower = subprocess.Popen(
            [*CLI, *args], env=settings_env(settings), cwd=ROOT, stdout=log, stderr=log
        )
    try:
        wait_for(lambda: "following" in log_path.read_text(), "the follower to start")
        assert calls(tmp_path) == ["reload"]  # nothing off baseline yet: an empty fragment
        until = int(time.time() * 1000) + 4_000
        produce(settings, record("domain:example.org", "suspended", 60, 1, 10, 1, until=until))
        wait_for(lambda: "pause queue example.org/*" in calls(tmp_path), "the pause")
        assert "max-msg-rate 60/h" in include.read_text()
        wait_for(lambda: "resume queue example.org/*" in calls(tmp_path), "the timer's resume")
        assert time.time() * 1000 >= until

        (tmp_path / "FAIL").touch()
        produce(settings, record("domain:example.org", "backoff", 120, 1, 10, 2))
        wait_for(lambda: "with exit code 3: pmta: cannot talk" in log_path.read_text(), "errors")
        (tmp_path / "FAIL").unlink()
        before = len(calls(tmp_path))
        produce(settings, record("group:apple", "backoff", 3600, 5, 5, 1))
        wait_for(lambda: "resume queue me.com/*" in calls(tmp_path), "apple")
        # The failed mode change is tried again with the next change, before the new ones.
        apple = [f"{verb} {d}/*" for d in ("icloud.com", "mac.com", "me.com")
                 for verb in ("set queue --mode=backoff", "resume queue")]  # fmt: skip
        assert calls(tmp_path)[before:] == [
            "reload",
            "set queue --mode=backoff example.org/*",
            *apple,
        ]
        assert "max-msg-rate 120/h" in include.read_text()
        assert follower.poll() is None
    finally:
        follower.send_signal(signal.SIGTERM)
        code = follower.wait(timeout=30)
    assert code == 0, log_path.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mta-feedback.")]
    assert os.access(include, os.R_OK)
