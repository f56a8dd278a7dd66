"""``mta-feedback convert`` as a real process: every input shape of every format (a Maildir,
an mbox, .eml files, stdin, zstd and gzip files, a directory of KumoMTA segments), the bad
records on stderr, the summary, the exit codes, and ``convert | replay`` end to end."""

from __future__ import annotations

import gzip
import json
import mailbox
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zstandard

from streams.adapters.base import Event
from streams.adapters.registry import converter

BIN = Path(sys.executable).parent
VENDORS = Path(__file__).parents[2] / "fixtures" / "vendors"
DSN = VENDORS / "dsn"
# A bounce, a complaint, a deferral, a damaged report and a message that is no report.
MAILBOX = [
    "postfix-bounce.eml",
    "arf-abuse.eml",
    "postfix-delayed.eml",
    "broken-boundary.eml",
    "not-report.eml",
]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mta-feedback"), *args],
        input=stdin.decode("utf-8", "surrogateescape") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def expected(fmt: str, units: list[str]) -> list[dict[str, Any]]:
    """What the converter gives in process for the same units: the reference."""
    conv = converter(fmt)
    results = [r for text in units for r in conv.feed(text)] + conv.finish()
    return [r.to_json() for r in results if isinstance(r, Event)]


def mailbox_texts() -> list[str]:
    return [(DSN / n).read_bytes().decode("utf-8", "surrogateescape") for n in MAILBOX]


def test_a_maildir_in_delivery_order_with_its_bad_message_reported(tmp_path):
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for n, name in enumerate(MAILBOX):
        msg = mailbox.MaildirMessage((DSN / name).read_bytes())
        msg.set_subdir("cur" if n % 2 else "new")
        box.add(msg)
    done = run("convert", "--from", "dsn", str(tmp_path / "Maildir"))
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == expected("dsn", mailbox_texts())
    [bad, last] = done.stderr.splitlines()
    assert bad.startswith("message 4 (") and bad.endswith(
        "): mime: multipart/report with no parts (boundary missing or wrong)"
    )
    assert last == (
        "mta-feedback convert: 3 events (bounce 2, retry 1); 1 skipped (not_report 1); "
        "1 bad (mime 1)"
    )
    assert "@" not in done.stderr  # never a recipient address


def test_an_mbox_an_eml_directory_a_single_file_and_stdin_read_alike(tmp_path):
    box = mailbox.mbox(tmp_path / "bounces.mbox", create=True)
    for name in MAILBOX:
        box.add((DSN / name).read_bytes())
    box.close()
    emls = tmp_path / "emls"
    emls.mkdir()
    for n, name in enumerate(MAILBOX):
        (emls / f"{n:02d}-{name}").write_bytes((DSN / name).read_bytes())
    (emls / "notes.txt").write_text("not a message file")
    want = expected("dsn", mailbox_texts())
    for source in (tmp_path / "bounces.mbox", emls):
        done = run("convert", "--from", "dsn", str(source))
        assert done.returncode == 0 and lines(done.stdout) == want, (source, done.stderr)
    stdin = run("convert", "--from", "dsn", "-", stdin=(tmp_path / "bounces.mbox").read_bytes())
    assert lines(stdin.stdout) == want
    single = DSN / "postfix-bounce.eml"
    one = expected("dsn", [single.read_text()])
    assert lines(run("convert", "--from", "dsn", str(single)).stdout) == one
    assert lines(run("convert", "--from", "dsn", stdin=single.read_bytes()).stdout) == one


def kumomta_lines() -> list[str]:
    return (VENDORS / "kumomta" / "records.jsonl").read_text().splitlines()


def test_zstd_kumomta_segments_and_a_directory_of_them_in_name_order(tmp_path):
    records = kumomta_lines()
    half = len(records) // 2
    plain = "\n".join(records) + "\n"
    # Two frames in one file, as a segment appended to in several writes.
    one = zstandard.ZstdCompressor().compress("\n".join(records[:half]).encode() + b"\n")
    two = zstandard.ZstdCompressor().compress("\n".join(records[half:]).encode() + b"\n")
    (tmp_path / "segment.zst").write_bytes(one + two)
    want = expected("kumomta", records)
    assert want, "the fixture has events"
    done = run("convert", "--from", "kumomta", str(tmp_path / "segment.zst"))
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == want
    segments = tmp_path / "logs"
    segments.mkdir()
    # Name order is time order for KumoMTA's segment names; the second is not compressed.
    (segments / "20260101-000000").write_bytes(one)
    (segments / "20260101-001000").write_text("\n".join(records[half:]) + "\n")
    done = run("convert", "--from", "kumomta", str(segments))
    assert done.returncode == 0 and lines(done.stdout) == want, done.stderr
    assert lines(run("convert", "--from", "kumomta", stdin=plain.encode()).stdout) == want


def test_a_gzip_rotated_mail_log(tmp_path):
    log = (VENDORS / "postfix" / "mail.log").read_bytes()
    (tmp_path / "mail.log.2.gz").write_bytes(gzip.compress(log))
    done = run("convert", "--from", "postfix", str(tmp_path / "mail.log.2.gz"))
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == expected("postfix", log.decode().splitlines())


def test_a_sparkpost_webhook_body_saved_over_many_lines_is_one_batch():
    body = VENDORS / "sparkpost" / "batch.json"
    done = run("convert", "--from", "sparkpost", str(body))
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == expected("sparkpost", [body.read_text()])


def test_stats_json_and_bad_lines_of_a_log(tmp_path):
    records = kumomta_lines()
    log = tmp_path / "log.jsonl"
    log.write_text(records[0] + "\n\nnot json\n" + records[1] + "\n")
    done = run("convert", "--from", "kumomta", "--stats-json", str(log))
    assert done.returncode == 0
    bad, stats = done.stderr.splitlines()
    assert bad.startswith("line 3: record: not JSON")  # the blank line 2 is left out
    summary = json.loads(stats)
    assert summary["bad"] == 1 and summary["bad_reasons"] == {"record": 1}
    assert sum(summary["events"].values()) == len(lines(done.stdout)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "pmta", "/nonexistent/acct.csv"), "cannot read /nonexistent/acct.csv"),
        (("--from", "pmta", str(VENDORS)), "is a directory"),
        (("--from", "dsn", "/nonexistent/Maildir"), "cannot read /nonexistent/Maildir"),
    ],
)
def test_input_that_cannot_be_read_exits_2_with_a_message(args, message):
    done = run("convert", *args)
    assert done.returncode == 2 and message in done.stderr and done.stdout == ""


def test_damaged_zstd_exits_2(tmp_path):
    data = zstandard.ZstdCompressor().compress(("\n".join(kumomta_lines()) + "\n").encode() * 20)
    (tmp_path / "bad.zst").write_bytes(data[:-40] + b"\xff" * 40)
    done = run("convert", "--from", "kumomta", str(tmp_path / "bad.zst"))
    assert done.returncode == 2 and "damaged zstd data" in done.stderr


@pytest.mark.parametrize("replay_input", ["/dev/stdin", "-"])
def test_convert_piped_into_replay_gives_the_statuses_of_the_bounce_mailbox(tmp_path, replay_input):
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for name in MAILBOX:
        box.add((DSN / name).read_bytes())
    convert = subprocess.Popen(
        [str(BIN / "mta-feedback"), "convert", "--from", "dsn", str(tmp_path / "Maildir")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    replay = subprocess.run(
        [str(BIN / "mta-feedback"), "replay", replay_input],
        stdin=convert.stdout,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert convert.wait(timeout=60) == 0 and replay.returncode == 0, replay.stderr
    assert "skipped" not in replay.stderr  # replay took every converted event
    state = {(r["type"], r.get("message_id") or r.get("address")): r for r in lines(replay.stdout)}
    # X-MTA-Feedback-Id named the message: its status is the bounce's, qualified by our rules.
    bounced = state[("message", "123456")]
    assert (bounced["status"], bounced["failure_type"], bounced["failure_reason"]) == (
        "failed",
        "hard",
        "User unknown",
    )
    assert bounced["delivery_id"] == "NL-2025-07"
    assert state[("address", "nobody@gmail.example")]["state"] == "quarantined"
    # The complainer is denylisted, as Campaign does.
    assert state[("address", "reader@mailbox-provider.example")]["state"] == "denylisted"
    # The deferral leaves its message pending with a soft error, its address "with errors".
    delayed = state[("message", "998877")]
    assert (delayed["status"], delayed["failure_type"], delayed["failure_reason"]) == (
        "taken_into_account",
        "soft",
        "Mailbox full",
    )
    assert state[("address", "full@quota.example.org")]["state"] == "with_errors"
