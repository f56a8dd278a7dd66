"""PowerMTA accounting files → input events: fixtures, record types, bad records, fuzz."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.base import Bad, Event, Result, Skip
from streams.adapters.pmta import PmtaConverter, mta_host, parse_reply, parse_time
from streams.adapters.registry import converter
from streams.runtime.codec import Codec
from streams.runtime.vendor_records import to_record
from streams.tools.replay import Replayer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vendors" / "pmta"
CODEC = Codec()
T0 = 1_795_165_200_000  # 2026-11-20 09:00:00 UTC, when the acct-unix.csv messages were queued
HEADER = "type,timeLogged,timeQueued,orig,rcpt,dsnStatus,dsnDiag,dsnMta,bounceCat,jobId,vmta"


def lines(name: str) -> list[str]:
    return [line for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def convert(text_lines: list[str], conv: PmtaConverter | None = None) -> list[Result]:
    conv = conv or PmtaConverter()
    results: list[Result] = []
    for line in text_lines:
        results += conv.feed(line)
    return results + conv.finish()


def events(results: list[Result]) -> list[dict]:
    return [r.to_json() for r in results if isinstance(r, Event)]


def outline(results: list[Result]) -> list[tuple]:
    """Each result in short: (family, kind, recipient), ("skip", what) or ("bad", reason)."""
    out: list[tuple] = []
    for r in results:
        if isinstance(r, Event):
            out.append((r.family, r.event["kind"], r.event["recipient"]))
        elif isinstance(r, Skip):
            out.append(("skip", r.what))
        else:
            out.append(("bad", r.reason))
    return out


def one(results: list[Result], family: str, kind: str, recipient: str) -> dict:
    found = [
        e
        for e in events(results)
        if (e["family"], e["kind"], e["recipient"]) == (family, kind, recipient)
    ]
    assert len(found) == 1, found
    return found[0]


def test_the_registry_names_this_converter():
    assert isinstance(converter("pmta"), PmtaConverter)


def test_every_record_type_of_the_unix_time_file():
    assert outline(convert(lines("acct-unix.csv"))) == [
        ("send", "relayed", "carol@example.com"),
        ("send", "delivered", "carol@example.com"),
        ("send", "relayed", "alice@example.org"),
        ("retry", "deferred", "alice@example.org"),
        ("send", "relayed", "bob@example.net"),
        ("bounce", "sync", "bob@example.net"),
        ("send", "relayed", "dave@example.info"),
        ("retry", "deferred", "dave@example.info"),
        ("send", "relayed", "erin@example.io"),
        ("retry", "deferred", "erin@example.io"),
        ("send", "relayed", "frank@example.net"),
        ("send", "delivered", "frank@example.net"),
        ("send", "relayed", "grace@example.com"),
        ("send", "delivered", "grace@example.com"),
        ("skip", "transient-queue"),
        ("skip", "received"),
        ("retry", "deferred", "alice@example.org"),
        ("send", "delivered", "dave@example.info"),
        ("bounce", "complaint", "frank@example.net"),
        ("bounce", "async", "grace@example.com"),
        ("skip", "remote-status"),
        ("retry", "expired", "alice@example.org"),
        ("retry", "expired", "erin@example.io"),
    ]


def test_a_deferral_carries_the_reply_and_the_first_record_implies_the_relay():
    results = convert(lines("acct-unix.csv"))
    relayed = one(results, "send", "relayed", "alice@example.org")
    assert relayed == {
        "family": "send",
        "event_id": relayed["event_id"],
        "event_time": T0,  # timeQueued
        "delivery_id": "nov-news",
        "message_id": "nov-news.1001@news.example.com:alice@example.org",
        "recipient": "alice@example.org",
        "kind": "relayed",
    }
    first = next(e for e in events(results) if e["kind"] == "deferred")
    assert first == {
        "family": "retry",
        "event_id": first["event_id"],
        "event_time": T0 + 15_000,
        "delivery_id": "nov-news",
        "message_id": "nov-news.1001@news.example.com:alice@example.org",
        "recipient": "alice@example.org",
        "kind": "deferred",
        "smtp_code": 452,
        "enhanced_status": "4.2.2",
        "diagnostic": "452 4.2.2 <alice@example.org>: Recipient address rejected: Mailbox full",
        "mx_host": "mx.example.org",
        "sending_ip": "198.51.100.7",
        "vendor_class": "quota-issues",
    }


def test_a_b_record_with_a_temporary_status_is_an_expiry_with_the_last_reply():
    expired = one(convert(lines("acct-unix.csv")), "retry", "expired", "alice@example.org")
    assert {
        k: expired[k] for k in ("event_time", "smtp_code", "enhanced_status", "diagnostic")
    } == {
        "event_time": 1_795_338_000_000,
        "smtp_code": 452,
        "enhanced_status": "4.2.2",
        "diagnostic": "452 4.2.2 <alice@example.org>: Recipient address rejected: Mailbox full",
    }
    assert "origin" not in expired  # the remote server's verdict


def test_a_b_record_with_a_permanent_reply_is_a_synchronous_bounce():
    bounce = one(convert(lines("acct-unix.csv")), "bounce", "sync", "bob@example.net")
    assert (bounce["smtp_code"], bounce["enhanced_status"], bounce["vendor_class"]) == (
        550,
        "5.1.1",
        "bad-mailbox",
    )
    assert bounce["mx_host"] == "mx1.example.net"


def test_connection_failures_without_a_reply_code_are_outages():
    results = convert(lines("acct-unix.csv"))
    timeout = one(results, "retry", "deferred", "dave@example.info")
    refused = one(results, "retry", "expired", "erin@example.io")
    assert timeout["origin"] == refused["origin"] == "connection"
    assert "smtp_code" not in timeout and "smtp_code" not in refused
    assert (timeout["enhanced_status"], timeout["diagnostic"]) == ("4.4.1", "Connection timed out")
    assert (refused["enhanced_status"], refused["diagnostic"]) == ("4.4.2", "Connection refused")


def test_feedback_loop_and_remote_bounce_records():
    results = convert(lines("acct-unix.csv"))
    complaint = one(results, "bounce", "complaint", "frank@example.net")
    assert complaint["vendor_class"] == "abuse"
    assert complaint["message_id"] == "nov-news.1006@news.example.com:frank@example.net"
    remote = one(results, "bounce", "async", "grace@example.com")
    assert (remote["smtp_code"], remote["enhanced_status"], remote["mx_host"]) == (
        550,
        "5.1.1",
        "mx.example.com",  # dsnReportingMta when there is no dsnMta
    )


def test_iso_times_and_the_fallback_identifiers():
    results = convert(lines("acct-iso.csv"))
    domain = one(results, "bounce", "sync", "someone@nonexistent.example")
    # No timeLogged column: the queue time is the record's time; +0100 is honoured.
    assert domain["event_time"] == 1_795_911_051_000
    assert (
        domain["message_id"]
        == "2026-11-29 01:10:51+0100:news@example.com:someone@nonexistent.example"
    )
    assert domain["delivery_id"] == "pmta"  # no jobId
    assert (domain["enhanced_status"], domain.get("diagnostic")) == ("5.1.2", None)
    delivered = one(results, "send", "delivered", "kim@example.org")
    assert delivered["message_id"] == "env-kim-1:kim@example.org"
    assert delivered["event_time"] == 1_795_939_203_000


def test_a_mixed_file_reports_each_bad_record_and_keeps_the_others():
    assert outline(convert(lines("acct-mixed.csv"))) == [
        ("send", "relayed", "lee@example.org"),
        ("send", "delivered", "lee@example.org"),
        ("bad", "column count: 6 fields, the header has 15"),
        ("bad", "recipient: missing or not a string"),
        ("bad", "time: timeLogged 'yesterday' is not a Unix or ISO 8601 time"),
        ("bad", "record type: unknown 'x'"),
        ("send", "relayed", "pat@example.org"),
        ("retry", "deferred", "pat@example.org"),
        ("bad", "unterminated quoted field: no closing quote"),
        ("bad", "message id: the record has none of header_Message-Id, envId, jobId, timeQueued"),
        ("send", "relayed", "sam@example.org"),
        ("send", "delivered", "sam@example.org"),
    ]


def test_a_quoted_reply_over_two_lines_is_one_record():
    deferred = one(convert(lines("acct-mixed.csv")), "retry", "deferred", "pat@example.org")
    assert deferred["diagnostic"] == (
        "421-4.7.0 [TSS04] Messages from 198.51.100.3 temporarily deferred\n"
        "421 4.7.0 due to user complaints"
    )
    assert (deferred["smtp_code"], deferred["enhanced_status"]) == (421, "4.7.0")


def test_an_unclosed_quote_at_the_end_is_reported_by_finish():
    conv = PmtaConverter()
    assert conv.feed(HEADER) == []
    assert conv.feed('d,1795400000,1795399990,a@example.com,b@example.org,"2.0.0') == []
    assert conv.finish() == [
        Bad(
            'd,1795400000,1795399990,a@example.com,b@example.org,"2.0.0',
            "unterminated quoted field: no closing quote",
        )
    ]
    assert conv.finish() == []


def test_records_before_any_header_are_bad_and_a_bom_is_ignored():
    row = "d,1795400000,1795399990,a@example.com,b@example.org,,,,,job,vmta"
    assert outline(convert([row])) == [
        ("bad", "no header line: the file must start with PowerMTA's header")
    ]
    assert [r[0] for r in outline(convert(["\ufeff" + HEADER, row]))] == ["send", "send"]


def test_the_implied_relay_comes_once_per_message_and_again_with_the_same_id_when_forgotten():
    conv = PmtaConverter(max_messages=1)
    rows = [
        HEADER,
        "t,1795400001,1795400000,s@example.com,a@example.org,4.2.2,smtp;452 4.2.2 Full,,,job,v",
        "t,1795400002,1795400000,s@example.com,a@example.org,4.2.2,smtp;452 4.2.2 Full,,,job,v",
        "t,1795400003,1795400000,s@example.com,b@example.org,4.2.2,smtp;452 4.2.2 Full,,,job,v",
        "d,1795400004,1795400000,s@example.com,a@example.org,2.0.0,smtp;250 ok,,,job,v",
    ]
    relays = [e for e in events(convert(rows, conv)) if e["kind"] == "relayed"]
    assert [e["recipient"] for e in relays] == ["a@example.org", "b@example.org", "a@example.org"]
    assert relays[0]["event_id"] == relays[2]["event_id"]


def test_a_bad_record_does_not_use_up_the_message_s_implied_relay():
    rows = [
        HEADER,
        "t,1795400001,soon,s@example.com,a@example.org,4.2.2,smtp;452 4.2.2 Full,,,job,v",
        "d,1795400004,1795400000,s@example.com,a@example.org,2.0.0,smtp;250 ok,,,job,v",
    ]
    assert outline(convert(rows)) == [
        ("bad", "time: timeQueued 'soon' is not a Unix or ISO 8601 time"),
        ("send", "relayed", "a@example.org"),
        ("send", "delivered", "a@example.org"),
    ]


def test_the_same_record_converted_twice_gives_the_same_events():
    first, second = convert(lines("acct-unix.csv")), convert(lines("acct-unix.csv"))
    assert events(first) == events(second)
    ids = [e["event_id"] for e in events(first)]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("kind", "status", "diag", "category", "expected"),
    [
        (
            "b",
            "5.1.1 (bad destination mailbox address)",
            "smtp;550 5.1.1 No",
            "",
            ("bounce", "sync"),
        ),
        ("b", "4.2.2 (mailbox full)", "smtp;452 4.2.2 Full", "", ("retry", "expired")),
        ("b", "4.4.7 (delivery time expired)", "", "message-expired", ("retry", "expired")),
        ("b", "", "", "message-expired", ("retry", "expired")),
        ("b", "", "", "other", ("bounce", "sync")),
        ("t", "4.7.0", "smtp;421 4.7.0 Try later", "policy-related", ("retry", "deferred")),
    ],
)
def test_the_meaning_of_each_b_and_t_record(kind, status, diag, category, expected):
    row = (
        f"{kind},1795400001,1795400000,s@example.com,a@example.org,{status},{diag},,{category},j,v"
    )
    results = convert([HEADER, row])
    assert outline(results)[1][:2] == expected


@pytest.mark.parametrize(
    ("diag", "status", "expected"),
    [
        ("smtp;452 4.2.2 Mailbox full", "", (452, "4.2.2", "452 4.2.2 Mailbox full")),
        ("smtp; 550-5.1.1 No such user", "", (550, "5.1.1", "550-5.1.1 No such user")),
        (
            "smtp;550 Requested action not taken",
            "5.0.0 (other)",
            (550, "5.0.0", "550 Requested action not taken"),
        ),
        (
            "Connection timed out",
            "4.4.1 (no answer from host)",
            (None, "4.4.1", "Connection timed out"),
        ),
        ("", "5.1.2 (bad destination system: no such domain)", (None, "5.1.2", None)),
        ("smtp;421 4.16.55.1 too fast", "", (421, None, "421 4.16.55.1 too fast")),
        ("X-Unix; delivery program failed", "", (None, None, "delivery program failed")),
        ("Connection timed out; giving up", "", (None, None, "Connection timed out; giving up")),
    ],
)
def test_parse_reply(diag, status, expected):
    assert parse_reply(diag, status) == expected


def test_parse_time_reads_unix_and_iso_times():
    assert parse_time("1795165200", "t") == T0
    assert parse_time("1795165200.25", "t") == T0 + 250
    assert parse_time("2026-11-20 10:00:00+0100", "t") == T0
    assert parse_time("2026-11-20T09:00:00Z", "t") == T0
    assert parse_time("2026-11-20 09:00:00", "t") == T0  # no offset: UTC
    with pytest.raises(ValueError, match="not a Unix or ISO 8601 time"):
        parse_time("30/11/2026", "t")


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("mx.example.com (192.0.2.1)", "mx.example.com"),
        ("dns; mx.example.com", "mx.example.com"),
        ("", None),
    ],
)
def test_mta_host(value, host):
    assert mta_host(value) == host


def test_replayed_statuses_follow_the_records():
    replayer = Replayer()
    for result in convert(lines("acct-unix.csv")):
        if isinstance(result, Event):
            replayer.apply(*replayer.normalise(result.to_json()))
    assert replayer.errors == []
    state = list(replayer.final_state())
    messages = {s["message_id"].split(":")[1]: s for s in state if s["type"] == "message"}
    addresses = {s["address"]: s for s in state if s["type"] == "address"}
    status = {r: (m["status"], m["failure_type"], m["failure_reason"]) for r, m in messages.items()}
    assert status["alice@example.org"] == ("failed", "soft", "Mailbox full")
    assert status["bob@example.net"] == ("failed", "hard", "User unknown")
    assert status["grace@example.com"] == ("failed", "hard", "User unknown")  # remote bounce
    assert status["dave@example.info"] == ("sent", None, None)
    assert status["frank@example.net"] == ("sent", None, None)
    # A connection that never answered is an outage: no error against the address.
    assert (
        addresses["dave@example.info"]["error_count"],
        addresses["dave@example.info"]["state"],
    ) == (
        0,
        "valid",
    )
    assert addresses["erin@example.io"]["error_count"] == 0
    assert addresses["alice@example.org"]["error_count"] > 0


# --- fuzz: nothing escapes, every result is an event, a bad record or a skip -----------

FIXTURE_LINES = [line for name in ("acct-unix.csv", "acct-mixed.csv") for line in lines(name)]


def _check(results: list[Result]) -> None:
    for index, result in enumerate(results):
        assert isinstance(result, Event | Bad | Skip)
        if isinstance(result, Event):
            assert result.family in ("send", "bounce", "retry")
            assert isinstance(result.event["event_time"], int)
        # What ingest and the HTTP service do with it never raises either.
        to_record(CODEC, result, "fuzz", index)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=8))
def test_random_lines_never_raise(texts):
    conv = PmtaConverter()
    results = conv.feed(HEADER)
    for text in texts:
        results += conv.feed(text)
    _check(results + conv.finish())


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(FIXTURE_LINES),
    st.integers(min_value=0, max_value=400),
    st.text(alphabet=st.sampled_from(',"\n;<>@ 0123456789abcdtfr-.:'), max_size=6),
)
def test_mutated_and_truncated_fixture_lines_never_raise(line, cut, insert):
    header = lines("acct-unix.csv")[0]
    mutated = line[:cut] + insert + line[cut + len(insert) :]
    results = convert([header, mutated, line[:cut], line])
    _check(results)
    assert convert([header, mutated, line[:cut], line]) == results  # same records, same ids
