"""Bounce rules: one test per rule family with realistic provider texts, robustness
(property) tests, operator-file overrides and malformed rules files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.bounce.literals import required_literals
from streams.domain.bounce.qualifier import Qualifier, default_qualifier, load_qualifier
from streams.domain.bounce.rules import RulesError, parse_reply
from streams.domain.types import Qualification

Q = default_qualifier()


def check(
    texts: list[str],
    failure_type: str,
    reason: str,
    bounce_class: int | None = None,
    rate_limit: bool | None = None,
) -> None:
    for text in texts:
        q = Q.qualify_text(text)
        assert (q.failure_type, q.failure_reason) == (failure_type, reason), (text, q)
        if bounce_class is not None:
            assert q.bounce_class == bounce_class, (text, q)
        if rate_limit is not None:
            assert q.rate_limit is rate_limit, (text, q)


def test_parse_reply():
    assert parse_reply("550-5.1.1 The email account that you tried to reach") == (550, (5, 1, 1))
    assert parse_reply("host mx.example.com[192.0.2.1] said: 452 4.2.2 Over quota") == (
        452,
        (4, 2, 2),
    )
    assert parse_reply("421 4.7.0 [TSS04] Messages from 192.0.2.25 deferred - 4.16.55.1") == (
        421,
        (4, 7, 0),
    )
    assert parse_reply("Sorry, no mailbox here by that name. (#5.1.1)") == (None, (5, 1, 1))
    assert parse_reply("connect to 192.0.2.1:25: Connection refused") == (None, None)


def test_user_unknown_family():
    check(
        [
            "550-5.1.1 The email account that you tried to reach does not exist. Please try "
            "550-5.1.1 double-checking the recipient's email address for typos - gsmtp",
            "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0]",
            "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)",
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown in local "
            "recipient table",
            "550 Unrouteable address",
            "Sorry, no mailbox here by that name. (#5.1.1)",
            "550 Message was not accepted -- invalid mailbox. Local mailbox bob@mail.ru is "
            "unavailable: user not found",
            "550 5.7.1 No such user!",
            "550 5.1.1 <bob@icloud.com>: user does not exist",
            "550 5.1.1 Adresse d au moins un destinataire invalide. Invalid recipient. OFR_416 "
            "[416]",
            "550 5.1.6 recipient no longer on server: bob@example.com",
        ],
        "hard",
        "User unknown",
        10,
    )


def test_invalid_domain_family():
    check(
        [
            "Host or domain name not found. Name service error for name=nope.example type=A: Host "
            "not found",
            "550 5.1.2 <bob@nope.example>... Host unknown (Name server: nope.example: host not "
            "found)",
            "Sorry, I couldn't find any host named nope.example. (#5.1.2)",
            "DNS Error: DNS type 'mx' lookup of nope.example responded with code NXDOMAIN",
            "556 5.1.10 Recipient address has null MX",
            "550 5.4.4 Unable to route: no mail exchanger found",
        ],
        "hard",
        "Invalid domain",
    )


def test_dns_temporary_failures_are_soft():
    check(
        [
            "Host or domain name not found. Name service error for name=x.example type=MX: Host "
            "not found, try again",
            "451 4.4.0 DNS query failed",
            "temporary failure in name resolution",
        ],
        "soft",
        "Unreachable",
        21,
    )


def test_mailbox_full_family():
    check(
        [
            "552-5.2.2 The recipient's inbox is out of storage space. Please direct the recipient "
            "to "
            "552 5.2.2 https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
            "452 4.2.2 The email account that you tried to reach is over quota",
            "550 5.2.2 STOREDRV.Deliver: mailbox full. MapiExceptionShutoffQuotaExceeded",
            "552 5.2.2 Mailbox size limit exceeded",
            "552 5.2.2 <bob@icloud.com>: user is over quota",
            "552-Requested mail action aborted: exceeded storage allocation",
            "552 5.1.1 Boite du destinataire pleine. Recipient overquota. OFR_417 [417]",
            "mailbox is full: retry timeout exceeded",
        ],
        "soft",
        "Mailbox full",
        22,
    )


def test_account_disabled_family():
    check(
        [
            "550-5.2.1 The email account that you tried to reach is disabled. Learn more at gsmtp",
            "554 30 Sorry, your message to bob@yahoo.com cannot be delivered. This mailbox is "
            "disabled (554.30)",
            "550 Message was not accepted -- invalid mailbox. Local mailbox bob@mail.ru is "
            "unavailable: account is disabled",
            "525 5.7.13 Disabled recipient address",
            "550 5.2.1 Mailbox disabled, not accepting messages",
        ],
        "soft",
        "Account disabled",
    )


def test_rate_limit_family():
    check(
        [
            "421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail "
            "originating from your IP address. To protect our users from spam, mail sent from your "
            "IP address has been temporarily rate limited. - gsmtp",
            "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
            "volume "
            "or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
            "421 4.7.0 [TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints",
            "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
            "reputation. For e-mail delivery information, see https://postmaster.live.com (S3114)",
            "421 RP-001 (COL004-MC1F1) Unfortunately, some messages from 192.0.2.1 weren't sent. "
            "Please try again. We have limits for how many messages can be sent per hour and per "
            "day.",
            "421 Too many concurrent SMTP connections from this IP address; please try again later",
            "452 4.3.2 Connection rate limit exceeded.",
            "421 mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration. "
            "Too many connections, slow down. OFR005_104 [104]",
            "421 ... Too many sessions opened. RL000001",
            "550 Ip frequency limited [Blocked IP 192.0.2.2]",
        ],
        "soft",
        "Refused",
        rate_limit=True,
    )
    assert Q.qualify(
        421, "4.7.0", "Try again later, closing connection.", "gmail-smtp-in.l.google.com"
    ).rate_limit
    assert not Q.qualify(
        421, "4.7.0", "Try again later, closing connection.", "mx.example.org"
    ).rate_limit


def test_authentication_family():
    check(
        [
            "550-5.7.26 This mail has been blocked because the sender is unauthenticated. "
            "Gmail requires all senders to authenticate with either SPF or DKIM. - gsmtp",
            "550 5.7.509 Access denied, sending domain [EXAMPLE.COM] does not pass DMARC "
            "verification "
            "and has a DMARC policy of reject.",
            "554 5.7.1 Your message was rejected due to example.com's DMARC policy.",
            "550 5.7.1 Email rejected per DMARC policy for example.com",
            "550 5.7.23 The message was rejected because of Sender Policy Framework violation",
        ],
        "soft",
        "Refused",
        50,
        rate_limit=False,
    )


def test_dnsbl_and_ip_block_family():
    check(
        [
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
            "zen.spamhaus.org; "
            "https://www.spamhaus.org/query/ip/192.0.2.1",
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using bl.spamcop.net",
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
            "b.barracudacentral.org",
            "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
            "Internet service provider since part of their network is on our block list (S3150).",
            "550 5.7.606 Access denied, banned sending IP [192.0.2.1].",
            "554 mta1.comcast.net comcast 192.0.2.1 Found on Comcast's block list. BL000000",
            "550 5.7.1 [192.0.2.1] Our system has detected that this message is likely suspicious "
            "due to the very low reputation of the sending IP address.",
            "553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred; "
            "Retrying will NOT succeed.",
            "550 mwinf5c04 ME Adresse IP source bloquee pour incident de spam. Client host blocked "
            "for spamming issues. OFR006_102",
        ],
        "soft",
        "Refused",
        rate_limit=False,
    )


def test_ptr_family():
    check(
        [
            "550-5.7.25 [192.0.2.1] The IP address sending this message does not have a PTR record "
            "setup, or the corresponding forward DNS entry does not point to the sending IP. - "
            "gsmtp",
            "554-No SMTP service 554-Bad DNS PTR resource record.",
            "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
        ],
        "soft",
        "Refused",
        50,
    )


def test_spam_content_and_virus_family():
    check(
        [
            "550 5.7.1 Message content rejected, UBE, id=12345-01",
            "554 5.7.1 [2] Message rejected under suspicion of SPAM; https://ya.cc/1IrBc",
            "550 spam message rejected. Please visit http://help.mail.ru/notspam-support",
            "554 5.6.0 This message has been scored as spam with a probability of more than 90%",
            "550 5.7.0 Virus Detected; Content Rejected",
        ],
        "soft",
        "Refused",
    )
    assert (
        Q.qualify_text(
            "552 5.7.0 Our system detected an illegal attachment on your message"
        ).bounce_class
        == 53
    )


def test_size_content_policy_relay_family():
    check(
        [
            "552 5.3.4 Message size exceeds fixed maximum message size",
            "552-5.2.3 Your message exceeded Google's message size limits.",
            "550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient",
        ],
        "soft",
        "Refused",
        23,
    )
    check(
        [
            "554 5.7.9 Message not accepted for policy reasons. See "
            "https://senders.yahooinc.com/error-codes",
            "554 5.7.1 [CS01] Message rejected due to local policy.",
            "550 5.7.1 RESOLVER.RST.AuthRequired; authentication required",
            "550-5.7.1 Messages with multiple addresses in From: header are not accepted.",
            "554 5.7.1 <bob@example.org>: Relay access denied",
            "550 5.7.1 Unable to relay for bob@example.org",
        ],
        "soft",
        "Refused",
    )


def test_transient_and_network_family():
    check(
        [
            "450 4.2.0 <bob@example.org>: Recipient address rejected: Greylisted, see "
            "http://postgrey.schweikert.ch/",
            "451 4.7.1 Please try again later (greylisting)",
            "connect to mx.example.org[192.0.2.1]:25: Connection refused",
            "conversation with mx.example.org[192.0.2.1] timed out while receiving the initial "
            "server greeting",
            "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)",
            "TLS handshake failed: certificate verify failed",
            "421 4.3.0 Temporary System Problem. Try again later.",
            "451 4.3.0 Error: queue file write error",
            "550 4.4.7 QUEUE.Expired; message expired",
            "554 5.4.6 Hop count exceeded - possible mail loop",
            "451 4.7.1 Sorry, the service is currently unavailable. Please come back later.",
            "all hosts for 'example.org' have been failing for a long time (and retry time not "
            "reached)",
        ],
        "soft",
        "Unreachable",
    )


def test_status_subject_and_code_fallbacks():
    cases = {
        (550, "5.1.1", "zz"): ("hard", "User unknown", "status-x.1.1-bad-mailbox"),
        (550, "5.1.9", "zz"): ("hard", "User unknown", "subject-x.1-addressing"),
        (552, "5.2.2", "zz"): ("soft", "Mailbox full", "status-x.2.2-mailbox-full"),
        (550, "5.3.9", "zz"): ("soft", "Unreachable", "subject-x.3-system"),
        (550, "5.4.9", "zz"): ("soft", "Unreachable", "subject-x.4-network"),
        (501, "5.5.2", "zz"): ("soft", "Unreachable", "subject-x.5-protocol"),
        (554, "5.6.9", "zz"): ("soft", "Refused", "subject-x.6-content"),
        (550, "5.7.99", "zz"): ("soft", "Refused", "subject-x.7-security"),
        (450, "4.1.1", "zz"): ("soft", "User unknown", "status-x.1.1-bad-mailbox"),
        (451, None, "zz"): ("soft", "Unreachable", "code-421-unavailable"),
        (452, None, "zz"): ("soft", "Not defined", "code-4xx"),
        (550, None, "zz"): ("hard", "User unknown", "code-55x-mailbox"),
        (554, None, "zz"): ("soft", "Not defined", "code-5xx"),
        (550, "5.0.0", "zz"): ("hard", "User unknown", "code-55x-mailbox"),
        (250, "2.0.0", "OK"): ("ignored", "Error ignored", "class-2-success"),
        (None, None, "zz qq"): ("undefined", "Not defined", "unmatched"),
        (None, None, None): ("undefined", "Not defined", "unmatched"),
    }
    for (code, status, text), expected in cases.items():
        q = Q.qualify(code, status, text)
        assert (q.failure_type, q.failure_reason, q.rule) == expected, (code, status, text, q)


def test_precedence_text_over_status_and_specific_over_weak():
    # The wording says over quota although the status says 5.1.1.
    assert (
        Q.qualify_text(
            "552 sorry, mailbox bob@example.org is over quota temporarily (#5.1.1)"
        ).failure_reason
        == "Mailbox full"
    )
    # A weak word ("rejected") does not override a precise status.
    assert (
        Q.qualify_text("550 5.1.1 <bob@example.org>... rejected").failure_reason == "User unknown"
    )
    # A generic x.0.0 status in the field yields to the precise status in the text.
    assert (
        Q.qualify(550, "5.0.0", "550 5.2.2 <bob@example.org>... zz").failure_reason
        == "Mailbox full"
    )


def test_auto_reply_challenge_unsubscribe():
    for text in [
        "Out of Office: back on Monday",
        "Automatic reply: Re: your order",
        "I am currently out of the office",
    ]:
        q = Q.qualify_text(text)
        assert (q.failure_type, q.bounce_class) == ("ignored", 60), text
    q = Q.qualify_text(
        "Please confirm that you are a real person by clicking the link (challenge-response)"
    )
    assert q.bounce_class == 100
    assert Q.qualify_text("unsubscribe").bounce_class == 90


def test_required_literals():
    assert required_literals(r"mailbox (?:is )?full") == ["mailbox "]
    assert required_literals(r"(?:client|sending) host\b.{0,9}blocked") == ["blocked"]
    assert sorted(required_literals(r"(?:spamhaus|spamcop)\b") or []) == ["spamcop", "spamhaus"]
    assert required_literals(r"a?b|zz") is None


@settings(max_examples=300, deadline=None)
@given(
    code=st.one_of(st.none(), st.integers(min_value=-(2**40), max_value=2**40)),
    status=st.one_of(
        st.none(),
        st.text(max_size=40),
        st.from_regex(r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
    ),
    text=st.one_of(
        st.none(),
        st.text(max_size=3000),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    ),
    provider=st.one_of(st.none(), st.text(max_size=300)),
)
def test_never_raises(code, status, text, provider):
    q = Q.qualify(code, status, text, provider)
    assert isinstance(q, Qualification)
    assert q.rule != "internal-error"
    assert q.failure_type in ("hard", "soft", "ignored", "undefined")
    if text:
        assert isinstance(Q.qualify_text(text), Qualification)


def test_huge_and_odd_inputs():
    assert isinstance(Q.qualify_text("550 " + "A" * 2_000_000), Qualification)
    assert isinstance(Q.qualify_text("\x00\xff\ud800 550 user unknown"), Qualification)
    assert Q.qualify("550", "bogus", b"550 5.1.1 user unknown").failure_reason == "User unknown"  # type: ignore[arg-type]


def test_cached_and_uncached_agree():
    uncached = Qualifier(cache_size=0)
    for text in ["550 5.1.1 user unknown", "421 4.7.0 [TSS04] deferred", "connection timed out"]:
        assert uncached.qualify_text(text) == Q.qualify_text(text) == Q.qualify_text(text)


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "operator.toml"
    path.write_text(body)
    return path


def test_operator_file_adds_and_overrides(tmp_path):
    path = write(
        tmp_path,
        """
[[rules]]
id = "acme-quota-code"
text = 'ACME-Q42'
bounce_class = 22

[[rules]]
id = "code-55x-mailbox"
reply_code = ["550", "551", "553"]
bounce_class = 40

[[rules]]
id = "greylisting"
enabled = false
""",
    )
    q = load_qualifier(path)
    assert q.qualify_text("550 5.7.1 rejected ACME-Q42").rule == "acme-quota-code"
    # The operator's text rule comes before the shipped ones of the same tier.
    assert q.qualify_text("550 user unknown ACME-Q42").rule == "acme-quota-code"
    assert q.qualify(550, None, "zz").failure_type == "soft"
    assert q.qualify_text("451 4.7.1 greylisted").rule != "greylisting"
    assert default_qualifier().qualify(550, None, "zz").failure_type == "hard"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('[[rules]]\nid = "r1"\ntext = "(unclosed"\nbounce_class = 10\n', "bad text regex"),
        ('[[rules]]\nid = "r1"\nreply_code = "5z0"\nbounce_class = 10\n', "bad reply_code"),
        (
            '[[rules]]\nid = "r1"\nenhanced_status = "5.x"\nbounce_class = 10\n',
            "bad enhanced_status",
        ),
        ('[[rules]]\nid = "r1"\ntext = "a"\nbounce_class = 77\n', "bounce_class 77"),
        (
            '[[rules]]\nid = "r1"\ntext = "a"\nbounce_class = 10\nfailure_type = "maybe"\n',
            "failure_type",
        ),
        ('[[rules]]\nid = "r1"\nbounce_class = 10\n', "needs at least one"),
        ('[[rules]]\nid = "r1"\ntext = "a"\nbounce_class = 10\ncolour = 1\n', "unknown keys"),
        ('[[rules]]\nid = "r1"\ntext = "a"\nbounce_class = 10\nrate_limit = "yes"\n', "rate_limit"),
        ('[[rules]]\ntext = "a"\nbounce_class = 10\n', "has no id"),
        (
            '[[rules]]\nid = "r1"\ntext = "a"\nbounce_class = 10\n[[rules]]\nid = "r1"\ntext = '
            '"b"\nbounce_class = 10\n',
            "duplicate id",
        ),
        ("[[rules]\nid = ", "invalid TOML"),
    ],
)
def test_malformed_operator_file(tmp_path, body, problem):
    path = write(tmp_path, body)
    with pytest.raises(RulesError) as info:
        load_qualifier(path)
    message = str(info.value)
    assert str(path) in message
    assert problem in message
    if "id" in body and problem not in ("has no id", "invalid TOML"):
        assert "'r1'" in message


def test_missing_operator_file(tmp_path):
    with pytest.raises(RulesError, match="cannot read"):
        load_qualifier(tmp_path / "absent.toml")


def test_every_class_documented():
    expected = {1, 10, 20, 21, 22, 23, 24, 25, 30, 40, 50, 51, 52, 53, 54, 60, 70, 80, 90, 100}
    assert set(Q.classes) == expected
    assert all(info.doc and info.failure_reason for info in Q.classes.values())
