"""The ``dsn`` adapter: bounce mailbox messages (RFC 3464 DSNs, RFC 5965 ARF reports,
non-standard bounces) → input events. Fixtures: tests/fixtures/vendors/dsn (each cites
its source in its Comments header)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.adapters.base import Bad, Event, Result, Skip
from streams.adapters.dsn import DsnConverter
from streams.pipeline.topics import Topic
from streams.runtime.codec import Codec
from streams.runtime.vendor_records import to_record

FIXTURES = Path(__file__).parents[2] / "fixtures" / "vendors" / "dsn"
CODEC = Codec()


def convert(text: str) -> list[Result]:
    return DsnConverter().feed(text)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("utf-8", "surrogateescape")


def summary(r: Result) -> tuple[Any, ...]:
    if isinstance(r, Skip):
        return ("skip", r.what)
    if isinstance(r, Bad):
        return ("bad", r.reason.split(":", 1)[0])
    e = r.event
    return (
        f"{r.family}/{e['kind']}",
        e["recipient"],
        e["delivery_id"],
        e["message_id"],
        e.get("smtp_code"),
        e.get("enhanced_status"),
        e.get("origin"),
    )


EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    "rfc3464-expired.eml": [
        # Failed after 5 days of time-outs, with a 4.x.x Status: the MTA gave up.
        (
            "retry/expired",
            "louis@slow.example.net",
            "dsn",
            "c-0001.louis@sender.example:louis@slow.example.net",
            426,
            "4.0.0",
            None,
        )
    ],
    "rfc3464-multi.eml": [
        (
            "bounce/async",
            "arathi@gateway.example.com",
            "dsn",
            "list-0708@sender.example:arathi@gateway.example.com",
            550,
            "5.0.0",
            None,
        ),
        (
            "retry/deferred",
            "john@lookup.example.org",
            "dsn",
            "list-0708@sender.example:john@lookup.example.org",
            None,
            "4.0.0",
            None,
        ),
        (
            "bounce/async",
            "wes@campus.example.edu",
            "dsn",
            "list-0708@sender.example:wes@campus.example.edu",
            550,
            "5.0.0",
            None,
        ),
    ],
    "rfc3464-relayed.eml": [("skip", "delivered"), ("skip", "relayed")],
    "arf-abuse.eml": [
        (
            "bounce/complaint",
            "Reader@mailbox-provider.example",
            "DLV-2025-07",
            "M-77",
            None,
            None,
            None,
        )
    ],
    "arf-no-rcpt-to.eml": [
        (
            "bounce/complaint",
            "sam@isp.example",
            "dsn",
            "m-88@sender.example:sam@isp.example",
            None,
            None,
            None,
        )
    ],
    "arf-auth-failure.eml": [("skip", "feedback_auth-failure")],
    "postfix-bounce.eml": [
        ("bounce/async", "nobody@gmail.example", "NL-2025-07", "123456", 550, "5.1.1", None)
    ],
    "postfix-expired.eml": [
        # Postfix's own text about a connection that never answered: an outage.
        (
            "retry/expired",
            "ops@down.example.net",
            "dsn",
            "ENV-553311:ops@down.example.net",
            None,
            "4.4.1",
            "connection",
        )
    ],
    "postfix-delayed.eml": [
        ("retry/deferred", "full@quota.example.org", "NL-2025-07", "998877", 452, "4.2.2", None)
    ],
    "exchange-ndr.eml": [
        (
            "bounce/async",
            "gone@corp.example.com",
            "dsn",
            "NL-2025-07.555@sender.example:gone@corp.example.com",
            550,
            "5.1.10",
            None,
        )
    ],
    "gmail-dsn.eml": [
        (
            "bounce/async",
            "typo@gmail.example",
            "dsn",
            "NL-2025-07.777@sender.example:typo@gmail.example",
            550,
            "5.1.1",
            None,
        )
    ],
    "no-diagnostic.eml": [("bounce/async", "dave@example.net", "FB-2025", "3", 552, "5.2.2", None)],
    "qmail-plain.eml": [
        ("bounce/async", "olduser@legacy.example", "NL-2025-07", "4242", 550, "5.1.1", None)
    ],
    "arrival-date-only.eml": [
        (
            "bounce/async",
            "missing@example.com",
            "dsn",
            "0100019f-obsolete-date@example.com:missing@example.com",
            550,
            "5.1.1",
            None,
        )
    ],
    "auto-reply.eml": [("skip", "auto_reply")],
    "not-report.eml": [("skip", "not_report")],
    "broken-boundary.eml": [("bad", "mime")],
    "dsn-no-recipient.eml": [("bad", "dsn")],
}


def test_every_fixture_has_its_expectation():
    assert sorted(p.name for p in FIXTURES.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name):
    assert [summary(r) for r in convert(fixture(name))] == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_event_of_the_fixtures_is_accepted_as_the_workers_accept_input(name):
    for result in convert(fixture(name)):
        if isinstance(result, Event):
            record = to_record(CODEC, result, "dsn:test", 1)
            assert record is not None and record.topic == Topic(result.family), record


def test_the_same_report_twice_gives_the_same_event_ids_and_each_recipient_its_own():
    first = [r.event["event_id"] for r in convert(fixture("rfc3464-multi.eml"))]
    second = [r.event["event_id"] for r in convert(fixture("rfc3464-multi.eml"))]
    assert first == second and len(set(first)) == 3


def test_the_reply_and_times_come_from_the_recipient_block():
    [event] = convert(fixture("rfc3464-expired.eml"))
    assert isinstance(event, Event)
    # Last-Attempt-Date (17:15:49 -0400) rather than the report's Date (17:16:05).
    assert event.event["event_time"] == 1751922949000
    assert event.event["diagnostic"] == "426 connection timed out"
    [gmail] = convert(fixture("gmail-dsn.eml"))
    assert isinstance(gmail, Event)
    assert gmail.event["mx_host"] == "gmail-smtp-in.l.google.example"


def test_a_diagnostic_missing_from_the_block_is_taken_from_the_human_text():
    [event] = convert(fixture("no-diagnostic.eml"))
    assert isinstance(event, Event)
    assert "552 5.2.2 Mailbox full" in event.event["diagnostic"]


# --- messages built for one point each ----------------------------------------------------


def report(
    blocks: str,
    *,
    per_message: str = "Reporting-MTA: dns; mx.example.net\n",
    returned: str | None = None,
    headers: str = "Date: Mon, 14 Jul 2025 09:30:04 +0000\nMessage-ID: <r1@mx.example.net>\n",
) -> str:
    parts = [
        "--B\nContent-Type: text/plain\n\nDelivery failed.\n",
        f"--B\nContent-Type: message/delivery-status\n\n{per_message}\n{blocks}",
    ]
    if returned is not None:
        parts.append(f"--B\nContent-Type: text/rfc822-headers\n\n{returned}")
    return (
        "From: MAILER-DAEMON@mx.example.net\nTo: bounces@sender.example\n"
        f"{headers}Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        + "\n".join(parts)
        + "\n--B--\n"
    )


FAILED = "Final-Recipient: rfc822; ann@example.org\nAction: failed\nStatus: 5.1.1\n"


def only_event(text: str) -> dict[str, Any]:
    [result] = convert(text)
    assert isinstance(result, Event), result
    return result.event


def test_our_header_wins_over_the_envelope_id_which_wins_over_the_message_id():
    returned = "Message-ID: <orig@sender.example>\nX-MTA-Feedback-Id: D9/M9\n"
    envid = "Reporting-MTA: dns; mx.example.net\nOriginal-Envelope-Id: ENV9\n"
    event = only_event(report(FAILED, per_message=envid, returned=returned))
    assert (event["delivery_id"], event["message_id"]) == ("D9", "M9")
    event = only_event(report(FAILED, per_message=envid, returned="Message-ID: <o@s.example>\n"))
    assert (event["delivery_id"], event["message_id"]) == ("dsn", "ENV9:ann@example.org")
    event = only_event(report(FAILED, returned="Message-ID: <o@s.example>\n"))
    assert event["message_id"] == "o@s.example:ann@example.org"


def test_a_malformed_feedback_header_falls_back_to_the_next_source():
    for value in ("no-slash", "/M1", "D1/", "D 1/M1"):
        returned = f"Message-ID: <o@s.example>\nX-MTA-Feedback-Id: {value}\n"
        event = only_event(report(FAILED, returned=returned))
        assert (event["delivery_id"], event["message_id"]) == (
            "dsn",
            "o@s.example:ann@example.org",
        ), value


def test_a_report_that_names_no_original_still_counts_against_the_address():
    event = only_event(report(FAILED))
    assert event["message_id"] == "r1@mx.example.net:ann@example.org"
    assert event["delivery_id"] == "dsn"


def test_original_recipient_is_preferred_to_an_alias_target():
    block = (
        "Original-Recipient: rfc822;old@example.org\n"
        "Final-Recipient: rfc822; new@elsewhere.example\nAction: failed\nStatus: 5.1.1\n"
    )
    assert only_event(report(block))["recipient"] == "old@example.org"


@pytest.mark.parametrize(
    ("status", "kind"), [("5.1.1", "async"), ("4.4.1", "expired"), ("5.4.7", "expired")]
)
def test_a_failure_after_temporary_failures_is_an_expiry(status, kind):
    block = f"Final-Recipient: rfc822; ann@example.org\nAction: failed\nStatus: {status}\n"
    assert only_event(report(block))["kind"] == kind


def test_a_block_without_action_is_read_from_its_status_class():
    block = "Final-Recipient: rfc822; ann@example.org\nStatus: 4.2.2\n"
    event = only_event(report(block))
    assert event["kind"] == "deferred"


def test_an_unknown_action_and_a_block_without_address_are_bad():
    unknown = "Final-Recipient: rfc822; ann@example.org\nAction: exploded\nStatus: 5.1.1\n"
    no_address = "Final-Recipient: x400; c=US;a=ATT\nAction: failed\nStatus: 5.1.1\n"
    results = convert(report(unknown + "\n" + no_address))
    assert [summary(r) for r in results] == [("bad", "dsn"), ("bad", "dsn")]
    assert all("ann@example.org" not in r.reason for r in results if isinstance(r, Bad))


def test_a_report_with_no_date_anywhere_is_bad():
    results = convert(report(FAILED, headers="Message-ID: <r2@mx.example.net>\n"))
    assert [summary(r) for r in results] == [("bad", "date")]


def test_eight_bit_diagnostics_keep_their_text():
    block = FAILED + "Diagnostic-Code: smtp; 552 5.2.2 bo\u00eete pleine\n"
    raw = report(block).encode("utf-8").decode("utf-8", "surrogateescape")
    assert only_event(raw)["diagnostic"] == "552 5.2.2 bo\u00eete pleine"


def test_a_diagnostic_of_any_length_is_cut_to_a_reply_size():
    block = FAILED + "Diagnostic-Code: smtp; 550 " + "x" * 50_000 + "\n"
    assert len(only_event(report(block))["diagnostic"]) == 2_000


@pytest.mark.parametrize(
    ("feedback_type", "expected"),
    [("abuse", "complaint"), ("fraud", "complaint"), ("not-spam", "skip"), ("x<y", "skip")],
)
def test_only_complaint_feedback_types_are_complaints(feedback_type, expected):
    text = fixture("arf-abuse.eml").replace(
        "Feedback-Type: abuse", f"Feedback-Type: {feedback_type}"
    )
    [result] = convert(text)
    if expected == "skip":
        assert isinstance(result, Skip) and result.what.startswith("feedback_")
        assert result.what in ("feedback_not-spam", "feedback_other")
    else:
        assert isinstance(result, Event) and result.event["kind"] == "complaint"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "message"),
        ("   \n\n", "message"),
        ("just some words, no header", "message"),
        ("\x00\x01\x02", "message"),
    ],
)
def test_input_that_is_not_a_message_is_bad(text, reason):
    assert [summary(r) for r in convert(text)] == [("bad", reason)]


def test_an_internationalized_dsn_rfc_6533():
    text = report(
        "Final-Recipient: utf-8; j\u00f6rg@example.org\nAction: failed\nStatus: 5.1.1\n\n" + FAILED
    ).replace("message/delivery-status", "message/global-delivery-status")
    raw = text.encode("utf-8").decode("utf-8", "surrogateescape")
    results = convert(raw)
    assert [summary(r)[:2] for r in results] == [
        ("bounce/async", "j\u00f6rg@example.org"),
        ("bounce/async", "ann@example.org"),
    ]
