"""The Postfix mail log → input events: a rotated log, notifications, bad lines, fuzz."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.base import Bad, Event, Result, Skip
from streams.adapters.postfix import PostfixConverter
from streams.adapters.postfix_reply import parse_reason
from streams.adapters.registry import converter
from streams.runtime.codec import Codec
from streams.runtime.vendor_records import to_record
from streams.tools.replay import Replayer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vendors" / "postfix"
NOW = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
CODEC = Codec()
NEWS = "nov-news.1001@news.example.com"


def lines(*names: str) -> list[str]:
    """The fixtures' log lines, without their source comments."""
    return [
        line
        for name in names
        for line in (FIXTURES / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def convert(text_lines: list[str], conv: PostfixConverter | None = None) -> list[Result]:
    conv = conv or PostfixConverter(now=NOW)
    results: list[Result] = []
    for line in text_lines:
        results += conv.feed(line)
    return results + conv.finish()


def events(results: list[Result]) -> list[dict]:
    return [r.to_json() for r in results if isinstance(r, Event)]


def outline(results: list[Result]) -> list[tuple]:
    out: list[tuple] = []
    for r in results:
        if isinstance(r, Event):
            out.append((r.family, r.event["kind"], r.event["recipient"]))
        elif isinstance(r, Skip):
            out.append(("skip", r.what))
        else:
            out.append(("bad", r.reason))
    return out


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_the_registry_names_this_converter():
    assert isinstance(converter("postfix"), PostfixConverter)


def test_a_rotated_log_read_in_order_joins_the_queue_ids_across_files():
    assert outline(convert(lines("mail.log.1", "mail.log"))) == [
        ("skip", "not outgoing mail"),  # smtpd connect
        ("skip", "not outgoing mail"),  # smtpd disconnect
        ("send", "relayed", "carol@example.com"),
        ("send", "delivered", "carol@example.com"),
        ("send", "relayed", "bob@example.net"),
        ("bounce", "sync", "bob@example.net"),
        ("send", "relayed", "alice@example.org"),
        ("retry", "deferred", "alice@example.org"),
        ("skip", "notification"),  # the non-delivery notice to the sender
        ("skip", "not outgoing mail"),  # anvil statistics
        ("skip", "not outgoing mail"),  # NOQUEUE reject
        ("skip", "not postfix"),  # opendkim
        ("send", "relayed", "dave@example.info"),
        ("retry", "deferred", "dave@example.info"),
        ("send", "relayed", "erin@example.io"),
        ("retry", "deferred", "erin@example.io"),
        ("send", "relayed", "frank@example.info"),
        ("retry", "deferred", "frank@example.info"),
        # mail.log
        ("retry", "deferred", "alice@example.org"),
        ("send", "delivered", "dave@example.info"),
        ("send", "delivered", "erin@example.io"),
        ("send", "delivered", "frank@example.info"),
        ("send", "relayed", "gina@nonexistent.example"),
        ("bounce", "sync", "gina@nonexistent.example"),
        ("send", "relayed", "postmaster@mta1.example.com"),
        ("send", "delivered", "postmaster@mta1.example.com"),
        ("retry", "deferred", "alice@example.org"),
        ("retry", "expired", "alice@example.org"),
    ]


def test_a_deferral_carries_the_remote_reply_and_the_relay_is_the_message_arrival():
    found = events(convert(lines("mail.log.1")))
    relayed, deferred = [e for e in found if e["recipient"] == "alice@example.org"]
    assert relayed == {
        "family": "send",
        "event_id": relayed["event_id"],
        "event_time": ms("2026-11-26 09:59:58"),
        "delivery_id": "bounces@news.example.com",
        "message_id": f"{NEWS}:alice@example.org",
        "recipient": "alice@example.org",
        "kind": "relayed",
    }
    assert deferred == {
        "family": "retry",
        "event_id": deferred["event_id"],
        "event_time": ms("2026-11-26 10:00:01"),
        "delivery_id": "bounces@news.example.com",
        "message_id": f"{NEWS}:alice@example.org",
        "recipient": "alice@example.org",
        "kind": "deferred",
        "smtp_code": 452,
        "enhanced_status": "4.2.2",
        "diagnostic": "452 4.2.2 <alice@example.org>: Recipient address rejected: Mailbox full",
        "mx_host": "mx.example.org",
    }


def test_the_expiry_carries_the_last_deferral_of_each_recipient_still_pending():
    found = events(convert(lines("mail.log.1", "mail.log")))
    expired = [e for e in found if e["kind"] == "expired"]
    assert expired == [
        {
            "family": "retry",
            "event_id": expired[0]["event_id"],
            "event_time": ms("2026-11-28 10:00:02"),
            "delivery_id": "bounces@news.example.com",
            "message_id": f"{NEWS}:alice@example.org",
            "recipient": "alice@example.org",
            "kind": "expired",
            "smtp_code": 452,
            "enhanced_status": "4.2.2",
            "diagnostic": "452 4.2.2 <alice@example.org>: Recipient address rejected: Mailbox full",
            "mx_host": "mx.example.org",
        }
    ]


def test_a_bounce_and_a_delivery():
    found = events(convert(lines("mail.log.1")))
    bounce = next(e for e in found if e["kind"] == "sync")
    assert (bounce["smtp_code"], bounce["enhanced_status"], bounce["mx_host"]) == (
        550,
        "5.1.1",
        "mx1.example.net",
    )
    assert bounce["diagnostic"].endswith("User unknown in virtual mailbox table")
    delivered = next(e for e in found if e["kind"] == "delivered")
    assert (delivered["recipient"], delivered["mx_host"]) == ("carol@example.com", "mx.example.com")


def test_connection_failures_are_outages_and_held_mail_is_the_mta_s_own_doing():
    found = {
        e["recipient"]: e for e in events(convert(lines("mail.log.1"))) if e["kind"] == "deferred"
    }
    timeout, dns, held = (
        found["dave@example.info"],
        found["erin@example.io"],
        found["frank@example.info"],
    )
    assert (timeout["origin"], timeout["enhanced_status"], timeout["mx_host"]) == (
        "connection",
        "4.4.1",
        "mx.example.info",
    )
    assert "smtp_code" not in timeout
    assert (dns["origin"], dns["enhanced_status"]) == ("connection", "4.4.3")
    assert held["origin"] == "local"  # delivery temporarily suspended: not tried
    assert held["diagnostic"] == "connect to mx.example.info[192.0.2.40]:25: Connection timed out"


def test_a_dns_answer_that_the_domain_does_not_exist_is_a_verdict_not_an_outage():
    bounce = next(e for e in events(convert(lines("mail.log"))) if e["kind"] == "sync")
    assert bounce["recipient"] == "gina@nonexistent.example"
    assert "origin" not in bounce and bounce["enhanced_status"] == "5.4.4"


def test_a_long_queue_id_is_joined_like_a_short_one():
    dave = [e for e in events(convert(lines("mail.log.1", "mail.log"))) if "dave" in e["recipient"]]
    assert {e["message_id"] for e in dave} == {"nov-alert.77@news.example.com:dave@example.info"}
    assert {e["delivery_id"] for e in dave} == {"alerts@news.example.com"}


def test_reading_the_second_file_alone_falls_back_to_the_queue_id():
    found = events(convert(lines("mail.log")))
    alice = [e for e in found if e["recipient"] == "alice@example.org"]
    assert alice[0]["message_id"] == "4C1A23F0D2:alice@example.org"
    assert alice[0]["delivery_id"] == "postfix"  # its qmgr line was in mail.log.1
    assert [e["kind"] for e in alice] == ["relayed", "deferred", "deferred", "expired"]


def test_the_same_line_twice_gives_the_same_event_ids():
    first = events(convert(lines("mail.log.1", "mail.log")))
    assert first == events(convert(lines("mail.log.1", "mail.log")))
    ids = [e["event_id"] for e in first]
    assert len(set(ids)) == len(ids)


def test_rfc3339_timestamps_and_another_instance_name():
    found = events(convert(lines("rfc3339.log")))
    assert [(e["kind"], e["event_time"]) for e in found] == [
        ("relayed", ms("2026-11-29 08:00:00.120")),
        ("delivered", ms("2026-11-29 08:00:01.500")),  # 09:00:01.5+01:00
    ]


@pytest.mark.parametrize(
    ("now", "before", "after"),
    [
        (NOW, "2025-12-31 23:59:50", "2026-01-01 00:10:02"),
        (datetime(2027, 1, 1, 0, 5, tzinfo=UTC), "2026-12-31 23:59:50", "2027-01-01 00:10:02"),
        (
            datetime(2026, 12, 31, 23, 59, 55, tzinfo=UTC),
            "2026-12-31 23:59:50",
            "2027-01-01 00:10:02",
        ),
    ],
)
def test_a_log_across_new_year_moves_to_the_next_year(now, before, after):
    found = events(convert(lines("newyear.log"), PostfixConverter(now=now)))
    assert found[0]["event_time"] == ms(before)
    assert found[-1]["event_time"] == ms(after)
    assert [e["kind"] for e in found] == ["relayed", "deferred", "delivered"]


def test_a_mixed_log_reports_each_bad_line_and_keeps_the_others():
    assert outline(convert(lines("mixed.log"))) == [
        (
            "bad",
            "delivery line: no dsn and status: "
            "'to=<ivan@example.org>, relay=mx.example.org[192.0.2.10]:25, delay=1'",
        ),
        ("bad", "recipient: missing or not a string"),
        ("bad", "syslog line: no timestamp, host and program"),
        ("bad", "timestamp: no year has 02-30 09:00:04"),
        ("bad", "qmgr line: not a sender line: 'from=<broken'"),
        ("skip", "not postfix"),
        ("send", "relayed", "ivan@example.org"),
        ("send", "delivered", "ivan@example.org"),
        ("skip", "address verification"),
    ]


def test_an_expiry_without_known_recipients_is_counted():
    line = (
        "Nov 28 10:00:02 mta1 postfix/qmgr[1]: 4C1A23F0D2: from=<a@example.com>, "
        "status=expired, returned to sender"
    )
    assert convert([line]) == [Skip("expired, recipients unknown")]


def test_a_soft_bounce_is_a_deferral():
    line = (
        "Nov 28 10:00:02 mta1 postfix/smtp[1]: 4C1A23F0D2: to=<a@example.org>, relay=mx.example.org"
        "[192.0.2.10]:25, delay=1, delays=0/0/0.5/0.5, dsn=4.1.1, status=SOFTBOUNCE (host "
        "mx.example.org[192.0.2.10] said: 550 5.1.1 No such user (in reply to RCPT TO command))"
    )
    assert outline(convert([line])) == [
        ("send", "relayed", "a@example.org"),
        ("retry", "deferred", "a@example.org"),
    ]


def test_removed_ends_a_queue_id_and_the_oldest_open_one_is_forgotten_past_the_limit():
    def line(second: int, qid: str, rest: str) -> str:
        return f"Nov 28 10:00:{second:02d} mta1 postfix/cleanup[1]: {qid}: {rest}"

    def sent(second: int, qid: str) -> str:
        return (
            f"Nov 28 10:00:{second:02d} mta1 postfix/smtp[2]: {qid}: to=<a@example.org>, "
            "relay=none, delay=1, delays=0/0/1/0, dsn=2.0.0, status=sent (250 ok)"
        )

    conv = PostfixConverter(now=NOW, max_open=2)
    results = convert(
        [
            line(1, "AAAAAA1", "message-id=<a@example.com>"),
            line(2, "BBBBBB2", "message-id=<b@example.com>"),
            line(3, "CCCCCC3", "message-id=<c@example.com>"),  # AAAAAA1 is forgotten
            sent(4, "AAAAAA1"),  # opens it again: BBBBBB2 is forgotten
            sent(5, "CCCCCC3"),
        ],
        conv,
    )
    assert [r for r in results if isinstance(r, Skip)] == [Skip("queue id forgotten")] * 2
    assert [e["message_id"] for e in events(results) if e["kind"] == "delivered"] == [
        "AAAAAA1:a@example.org",
        "c@example.com:a@example.org",
    ]
    after_removal = convert([line(6, "CCCCCC3", "removed"), sent(7, "CCCCCC3")], conv)
    assert [e["message_id"] for e in events(after_removal)] == ["CCCCCC3:a@example.org"] * 2


@pytest.mark.parametrize(
    ("reason", "dsn", "final", "expected"),
    [
        (
            "host mx.example.org[192.0.2.10] said: 452 4.2.2 Mailbox full"
            " (in reply to RCPT TO command)",
            "4.2.2",
            False,
            (452, "4.2.2", "452 4.2.2 Mailbox full", "mx.example.org", None),
        ),
        (
            "host mx.example.org[192.0.2.10] said: 550 Mailbox unavailable"
            " (in reply to end of DATA command)",
            "5.0.0",
            True,
            (550, "5.0.0", "550 Mailbox unavailable", "mx.example.org", None),
        ),
        (
            "lost connection with mx.example.org[192.0.2.10] while receiving the initial"
            " server greeting",
            "4.4.2",
            False,
            (None, "4.4.2", None, "mx.example.org", "connection"),
        ),
        (
            "conversation with mx.example.org[192.0.2.10] timed out while sending end of data",
            "4.4.2",
            False,
            (None, "4.4.2", None, "mx.example.org", "connection"),
        ),
        ('unknown user: "bob"', "5.1.1", True, (None, "5.1.1", 'unknown user: "bob"', None, None)),
    ],
)
def test_parse_reason(reason, dsn, final, expected):
    reply = parse_reason(reason, dsn, final)
    got = (reply.smtp_code, reply.enhanced_status, reply.diagnostic, reply.mx_host, reply.origin)
    if expected[2] is None:  # a Postfix description: the whole reason is the text
        expected = (*expected[:2], reason, *expected[3:])
    assert got == expected


def test_replayed_statuses_follow_the_log():
    replayer = Replayer()
    for result in convert(lines("mail.log.1", "mail.log")):
        if isinstance(result, Event):
            replayer.apply(*replayer.normalise(result.to_json()))
    assert replayer.errors == []
    state = list(replayer.final_state())
    messages = {s["message_id"].split(":")[1]: s for s in state if s["type"] == "message"}
    addresses = {s["address"]: s for s in state if s["type"] == "address"}
    status = {r: (m["status"], m["failure_type"], m["failure_reason"]) for r, m in messages.items()}
    assert status["alice@example.org"] == ("failed", "soft", "Mailbox full")
    assert status["bob@example.net"] == ("failed", "hard", "User unknown")
    assert status["dave@example.info"] == ("sent", None, None)
    # Connection failures and held mail are no error against the address.
    for address in ("dave@example.info", "erin@example.io", "frank@example.info"):
        assert (addresses[address]["state"], addresses[address]["error_count"]) == ("valid", 0)
    assert addresses["bob@example.net"]["state"] == "quarantined"


# --- fuzz: nothing escapes, every result is an event, a bad line or a skip -------------

FIXTURE_LINES = lines("mail.log.1", "mail.log", "newyear.log", "rfc3339.log", "mixed.log")


def _check(results: list[Result]) -> None:
    for index, result in enumerate(results):
        assert isinstance(result, Event | Bad | Skip)
        if isinstance(result, Event):
            assert result.family in ("send", "bounce", "retry")
            assert isinstance(result.event["event_time"], int)
        to_record(CODEC, result, "fuzz", index)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=8))
def test_random_lines_never_raise(texts):
    _check(convert(texts))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(FIXTURE_LINES), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=300),
    st.text(alphabet=st.sampled_from("<>[]():,=; 0123456789ABCDEFz.-T+"), max_size=6),
)
def test_mutated_and_truncated_fixture_lines_never_raise(picked, cut, insert):
    mutated = [line[:cut] + insert + line[cut + len(insert) :] for line in picked]
    fed = picked + mutated + [line[:cut] for line in picked]
    results = convert(fed)
    _check(results)
    assert convert(fed) == results  # same lines, same ids
