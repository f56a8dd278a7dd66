"""``mta-feedback qualify`` run() with files in tmp_path."""

from __future__ import annotations

import argparse
import io
import json
import sys

from streams.tools import qualify

DSN = b"""From: MAILER-DAEMON@mta1.example.net
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

--B1
Content-Type: text/plain

The mail system could not deliver your message.

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mta1.example.net

Final-Recipient: rfc822; alice@gmail.com
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist.

Final-Recipient: rfc822; bob@yahoo.com
Action: delayed
Status: 4.7.0
Diagnostic-Code: smtp; 421 4.7.0 [TSS04] Messages temporarily deferred

--B1--
"""

ARF = b"""From: feedback@fbl.example.net
Subject: Spam report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain

This is an email abuse report.

--ARF
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Rcpt-To: <frank@example.org>

--ARF--
"""


def run(capsys, *argv: str, stdin: bytes | None = None, monkeypatch=None):
    parser = argparse.ArgumentParser()
    qualify.add_arguments(parser)
    args = parser.parse_args(argv)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = qualify.run(args)
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    return code, lines, captured.err


def test_lines_json_and_bare_text(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text(
        "\n".join(
            [
                json.dumps(
                    {"smtp_code": 550, "enhanced_status": "5.1.1", "diagnostic": "user unknown"}
                ),
                json.dumps(
                    {
                        "smtp_code": "421",
                        "diagnostic": "421 4.7.0 [TSS04] deferred",
                        "provider": "yahoo.com",
                    }
                ),
                "host mx.example.org said: 452 4.2.2 Mailbox full",
                "",
                "{not json",
                "[1, 2]",
                json.dumps({"smtp_code": "abc"}),
            ]
        )
        + "\n"
    )
    code, out, _ = run(capsys, str(src))
    assert code == 0
    assert len(out) == 7
    assert out[0]["failure_type"] == "hard" and out[0]["failure_reason"] == "User unknown"
    assert out[1]["rate_limit"] is True
    assert out[2]["failure_reason"] == "Mailbox full" and out[2]["bounce_class"] == 22
    for bad in (out[3], out[4], out[6]):
        assert bad["failure_type"] == "undefined" and "error" in bad
    # A line that is not a JSON object is a bare reply text; this one says nothing.
    assert out[5]["rule"] == "unmatched" and "error" not in out[5]
    assert set(out[0]) == {"failure_type", "failure_reason", "bounce_class", "rule", "rate_limit"}


def test_stdin_binary_and_huge_line(capsys, monkeypatch):
    data = (
        b"\xff\xfe\x00 550 5.1.1 user unknown\n"
        + b"A" * 1_000_000
        + b"\n421 too many connections\n"
    )
    code, out, _ = run(capsys, stdin=data, monkeypatch=monkeypatch)
    assert code == 0
    assert [o["failure_type"] for o in out] == ["hard", "undefined", "soft"]
    assert "longer than" in out[1]["error"]


def test_dsn_files(tmp_path, capsys):
    (tmp_path / "a.eml").write_bytes(DSN)
    (tmp_path / "b.eml").write_bytes(ARF)
    code, out, _ = run(capsys, "--dsn", str(tmp_path / "a.eml"), str(tmp_path / "b.eml"))
    assert code == 0
    assert [(o["file"].rsplit("/", 1)[1], o["recipient"]) for o in out] == [
        ("a.eml", "alice@gmail.com"),
        ("a.eml", "bob@yahoo.com"),
        ("b.eml", "frank@example.org"),
    ]
    assert out[0]["failure_type"] == "hard" and out[0]["status"] == "5.1.1"
    assert out[2]["kind"] == "complaint" and out[2]["feedback_type"] == "abuse"


def test_unreadable_input_and_bad_rules(tmp_path, capsys):
    code, out, err = run(capsys, str(tmp_path / "missing.txt"))
    assert code == 2 and out == [] and "cannot read" in err
    code, _, err = run(capsys, "--dsn", str(tmp_path / "missing.eml"))
    assert code == 2 and "cannot read" in err
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nid = "x"\ntext = "("\nbounce_class = 10\n')
    code, out, err = run(capsys, "--rules", str(rules), str(tmp_path / "missing.txt"))
    assert code == 2 and "rule 'x'" in err and str(rules) in err


def test_operator_rules_apply(tmp_path, capsys):
    rules = tmp_path / "rules.toml"
    rules.write_text("[[rules]]\nid = \"acme\"\ntext = 'ACME-77'\nbounce_class = 22\n")
    src = tmp_path / "in.txt"
    src.write_text("550 ACME-77\n")
    code, out, _ = run(capsys, "--rules", str(rules), str(src))
    assert code == 0 and out[0]["rule"] == "acme"
