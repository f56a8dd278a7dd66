"""The command line as a new user meets it: run as a subprocess, as from a shell. Secrets
masked, one line and a documented exit code when a service is unreachable, --version,
warnings about unknown variables, progress bars only on a terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import time
import uuid
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streams.runtime.config import KNOWN_VARS, Settings
from streams.tools.cli import config_lines

ROOT = Path(__file__).resolve().parents[2]
CLOSED = "127.0.0.1:1"  # nothing listens on port 1: connection refused at once


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without unknown MTA_* variables (they would add warning
    lines), plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MTA_") or k in KNOWN_VARS}
    base.pop("FORCE_COLOR", None)
    return {**base, **extra}


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.tools.cli", *args],
        cwd=ROOT,
        env=_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- config: secrets masked ---------------------------------------------------------------


@given(user=st.text(min_size=1, max_size=20), password=st.text(min_size=3, max_size=20))
def test_config_json_never_shows_a_url_password(user, password):
    forms = {password, quote(password, safe=""), json.dumps(password)[1:-1]}

    def shown(pw: str) -> str:
        url = f"redis://{quote(user, safe='')}:{quote(pw, safe='')}@127.0.0.1:6379/0"
        return config_lines(Settings.from_env({"REDIS_URL": url}), as_json=True)[0]

    assume(not any(form in shown("") for form in forms))
    out = shown(password)
    assert not any(form in out for form in forms)
    assert json.loads(out)["REDIS_URL"]["value"] == (
        f"redis://{quote(user, safe='')}:****@127.0.0.1:6379/0"
    )


def test_config_masks_urls_in_both_forms():
    env = _env(
        REDIS_URL="redis://u:s3cret@host:6379/0",
        SCHEMA_REGISTRY_URL="https://key:reg-s3cret@registry:8081/?token=t0ken",
        MTA_HTTP_TOKEN="bearer-s3cret",
    )
    table, as_json = cli("config", env=env), cli("config", "--json", env=env)
    assert table.returncode == as_json.returncode == 0
    for out in (table.stdout, as_json.stdout):
        assert "s3cret" not in out and "t0ken" not in out
        assert "redis://u:****@host:6379/0" in out
        assert "https://key:****@registry:8081/?token=****" in out
    settings = json.loads(as_json.stdout)
    assert settings["MTA_HTTP_TOKEN"] == {
        "value": "****",
        "doc": "Bearer token of the operator API",
    }
    assert settings["MTA_PARTITIONS"]["value"] == 4  # typed, for machines
    assert as_json.stdout.count("\n") == 1


# --- --version, unknown variables, log level ----------------------------------------------


def test_version_comes_from_the_installed_distribution():
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"mta-feedback {metadata.version('mta-feedback')}"


def test_an_unknown_variable_is_one_warning_line_with_a_suggestion():
    done = cli("config", "--json", env=_env(MTA_PARTITON="8", MTA_LOG_LEVEL="INFO"))
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "mta-feedback: warning: MTA_PARTITON is not a known variable and is ignored "
        "(did you mean MTA_PARTITIONS?)"
    ]
    settings = json.loads(done.stdout)
    assert settings["MTA_PARTITIONS"]["value"] == 4  # the typo changed nothing
    assert settings["MTA_LOG_LEVEL"]["value"] == "info"


def test_a_bad_value_is_exit_code_2_without_its_secret():
    done = cli("config", env=_env(MTA_BOOTSTRAP_SERVERS="sasl://u:hunter22@broker"))
    assert done.returncode == 2
    assert "hunter22" not in done.stderr
    assert done.stderr.count("\n") == 1


# --- services unreachable: one line, exit code 3 ------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--message", "M-1"],
        ["status", "--address", "bob@example.org"],
        ["status", "--delivery", "D1"],
        ["throttle"],
        ["reputation", "group:google"],
    ],
    ids=" ".join,
)
def test_redis_unreachable_is_one_line_and_exit_code_3(args):
    done = cli(*args, env=_env(REDIS_URL=f"redis://ops:s3cret-pw@{CLOSED}/0"))
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        f"mta-feedback {args[0]}: Redis at redis://ops:****@{CLOSED}/0 is unreachable: "
        "Error 111 connecting to 127.0.0.1:1. Connection refused."
    ]
    assert done.stdout == ""


def test_broker_unreachable_is_one_line_and_exit_code_3():
    started = time.monotonic()
    done = cli("dlq", env=_env(MTA_BOOTSTRAP_SERVERS=CLOSED))
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        f"mta-feedback dlq: Kafka broker at {CLOSED} is unreachable"
    ]
    assert time.monotonic() - started < 30


@pytest.mark.redis
def test_not_found_is_exit_code_1(redis_client):
    prefix = f"t{uuid.uuid4().hex[:10]}"
    assert not redis_client.keys(f"{prefix}:*")
    env = _env(MTA_TOPIC_PREFIX=prefix)
    for args, title in [
        (["status", "--message", "M-1"], "message M-1"),
        (["status", "--address", "bob@example.org"], "address"),
        (["throttle", "group:google"], "throttle group:google"),
    ]:
        done = cli(*args, env=env)
        assert (done.returncode, done.stderr) == (1, f"{title}: not found\n")


@pytest.mark.broker
def test_dlq_without_its_topic_is_exit_code_1(stack):
    done = cli("dlq", env=_env(MTA_TOPIC_PREFIX=f"t{uuid.uuid4().hex[:10]}"))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].endswith(".dlq does not exist")


# --- progress bars -------------------------------------------------------------------------

BAR = "━"  # rich's bar character


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    lines = [
        {
            "family": "send",
            "kind": "relayed",
            "event_id": f"e{i}",
            "event_time": 1_767_225_600_000 + i,
            "delivery_id": "D",
            "message_id": f"M{i}",
            "recipient": f"r{i}@example.org",
        }
        for i in range(600)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _on_a_terminal(
    args: list[str], tmp_path: Path, stdin: Path | None = None
) -> tuple[int, str, bytes]:
    """Runs the CLI with stderr on a pseudo-terminal (100 columns), stdout to a file and
    ``stdin`` through a pipe (``cat``): (exit code, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    out = tmp_path / "stdout"
    cat = subprocess.Popen(["cat", str(stdin or os.devnull)], stdout=subprocess.PIPE)
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.tools.cli", *args],
            cwd=ROOT,
            env=_env(TERM="xterm-256color"),
            stdin=cat.stdout,
            stdout=stdout,
            stderr=slave,
        )
    assert cat.stdout is not None
    cat.stdout.close()
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    cat.wait(timeout=60)
    return proc.wait(timeout=120), out.read_text(), seen


@pytest.mark.parametrize("source", ["file", "pipe"])
def test_replay_draws_no_bar_when_stderr_is_not_a_terminal(events_file, source):
    piped = source == "pipe"
    done = subprocess.run(
        [sys.executable, "-m", "streams.tools.cli", "replay", "-" if piped else str(events_file)],
        cwd=ROOT,
        env=_env(FORCE_COLOR="1"),  # rich alone would draw for this
        input=events_file.read_text() if piped else None,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stderr == ""
    assert "\x1b" not in done.stdout
    assert len(done.stdout.splitlines()) == 600 + 600 + 1  # messages, addresses, KPI


def test_replay_draws_a_bar_by_bytes_on_a_terminal(events_file, tmp_path):
    code, out, seen = _on_a_terminal(["replay", str(events_file)], tmp_path)
    assert code == 0
    text = seen.decode()
    assert f"replay {events_file.name}" in text and BAR in text
    size = f"{events_file.stat().st_size / 1000:.1f}"
    assert f"{size}/{size} kB" in text
    assert "\x1b" not in out and len(out.splitlines()) == 1201


def test_replay_from_a_pipe_draws_a_bar_by_lines(events_file, tmp_path):
    code, out, seen = _on_a_terminal(["replay", "-"], tmp_path, stdin=events_file)
    assert code == 0
    assert "replay stdin" in seen.decode() and "600/?" in seen.decode()  # no total: a pipe
    assert len(out.splitlines()) == 1201


def test_simulate_draws_a_bar_on_a_terminal_and_none_elsewhere(tmp_path):
    args = ["simulate", "--in-process", "--recipients", "60"]
    code, out, seen = _on_a_terminal(args, tmp_path)
    assert code == 0
    assert "simulate adaptive" in seen.decode() and "messages final" in seen.decode()
    assert json.loads(out)["recipients"] == 60
    piped = cli(*args)
    assert piped.returncode == 0
    assert "\x1b" not in piped.stderr and BAR not in piped.stderr
