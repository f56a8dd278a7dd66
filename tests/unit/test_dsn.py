"""DSN (RFC 3464), ARF (RFC 5965), auto-reply and non-bounce recognition."""

from __future__ import annotations

from streams.domain.bounce.dsn import parse_report
from streams.domain.bounce.qualifier import default_qualifier

Q = default_qualifier()

DSN = b"""Return-Path: <>
From: Mail Delivery System <MAILER-DAEMON@mta1.example.net>
To: bounces@sender.example.com
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

--B1
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mta1.example.net.

<alice@gmail.com>: host gmail-smtp-in.l.google.com[142.250.1.26] said:
    550-5.1.1 The email account that you tried to reach does not exist.

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mta1.example.net
Arrival-Date: Mon, 3 Jun 2024 10:00:00 +0000

Final-Recipient: rfc822; alice@gmail.com
Original-Recipient: rfc822;alice@gmail.com
Action: failed
Status: 5.1.1
Remote-MTA: dns; gmail-smtp-in.l.google.com
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does
    not exist. Please try double-checking the recipient's email address - gsmtp

Final-Recipient: rfc822; bob@yahoo.com
Action: delayed
Status: 4.7.0
Remote-MTA: dns; mta5.am0.yahoodns.net
Diagnostic-Code: smtp; 421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily
    deferred due to unexpected volume or user complaints

Final-Recipient: rfc822; carol@example.org
Action: delivered
Status: 2.0.0

--B1
Content-Type: message/rfc822

From: news@sender.example.com
To: alice@gmail.com
Subject: Hello

Hi
--B1--
"""

DSN_NO_DIAGNOSTIC = b"""From: MAILER-DAEMON@mx.example.net
To: bounces@sender.example.com
Subject: Delivery Status Notification (Failure)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="XX"

--XX
Content-Type: text/plain

Delivery to the following recipient failed permanently:

    dave@example.org

Technical details of permanent failure:
552 5.2.2 Mailbox full: dave@example.org is over quota

--XX
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; dave@example.org
Action: failed
Status: 5.0.0
Diagnostic-Code:

--XX--
"""

QMAIL = b"""From: MAILER-DAEMON@mail.example.net
To: bounces@sender.example.com
Subject: failure notice

Hi. This is the qmail-send program at mail.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<erin@example.org>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.
"""

ARF = b"""From: feedback@fbl.example.net
To: fbl@sender.example.com
Subject: FW: Spam report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message received from IP 192.0.2.1.

--ARF
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <bounces@sender.example.com>
Original-Rcpt-To: <frank@example.org>
Arrival-Date: Thu, 8 Mar 2024 14:00:00 EDT
Source-IP: 192.0.2.1

--ARF
Content-Type: text/rfc822-headers

From: <news@sender.example.com>
To: <frank@example.org>
Subject: Our offer

--ARF--
"""

ARF_NO_RCPT = ARF.replace(b"Original-Rcpt-To: <frank@example.org>\n", b"")

AUTO_REPLY = b"""From: Grace <grace@example.org>
To: news@sender.example.com
Subject: Out of Office: Our offer
Auto-Submitted: auto-replied

I am out of the office until Monday.
"""

X_AUTOREPLY = b"""From: heidi@example.org
To: news@sender.example.com
Subject: Re: Our offer
X-Autoreply: yes

Away.
"""

PLAIN = b"""From: ivan@example.org
To: news@sender.example.com
Subject: Re: Our offer

Thanks, I'll have a look; the mailbox was full last week.
"""


def test_dsn_one_result_per_failed_recipient():
    report = parse_report(DSN, Q)
    assert report.kind == "bounce"
    assert [r.recipient for r in report.results] == ["alice@gmail.com", "bob@yahoo.com"]
    alice, bob = report.results
    assert alice.action == "failed" and alice.status == "5.1.1"
    assert alice.remote_mta == "gmail-smtp-in.l.google.com"
    assert alice.diagnostic and alice.diagnostic.startswith("550-5.1.1 The email account")
    assert (alice.qualification.failure_type, alice.qualification.failure_reason) == (
        "hard",
        "User unknown",
    )
    assert bob.action == "delayed"
    assert bob.qualification.rate_limit and bob.qualification.failure_type == "soft"


def test_dsn_empty_diagnostic_falls_back_to_human_text():
    report = parse_report(DSN_NO_DIAGNOSTIC, Q)
    assert report.kind == "bounce"
    (dave,) = report.results
    assert dave.recipient == "dave@example.org"
    assert dave.diagnostic is None
    assert dave.qualification.failure_reason == "Mailbox full"


def test_plain_text_bounce_without_delivery_status():
    report = parse_report(QMAIL, Q)
    assert report.kind == "bounce"
    (erin,) = report.results
    assert erin.recipient == "erin@example.org"
    assert erin.qualification.failure_reason == "User unknown"


def test_arf_complaint():
    report = parse_report(ARF, Q)
    assert report.kind == "complaint"
    assert report.feedback_type == "abuse"
    (frank,) = report.results
    assert frank.recipient == "frank@example.org"
    assert (frank.qualification.bounce_class, frank.qualification.failure_reason) == (90, "Refused")
    # Without Original-Rcpt-To, the To of the attached headers names the recipient.
    assert parse_report(ARF_NO_RCPT, Q).results[0].recipient == "frank@example.org"


def test_auto_replies():
    for raw, who in [(AUTO_REPLY, "grace@example.org"), (X_AUTOREPLY, "heidi@example.org")]:
        report = parse_report(raw, Q)
        assert report.kind == "auto_reply"
        (result,) = report.results
        assert result.recipient == who
        assert (result.qualification.failure_type, result.qualification.bounce_class) == (
            "ignored",
            60,
        )


def test_ordinary_mail_and_garbage_are_not_bounces():
    assert parse_report(PLAIN, Q).kind == "not_bounce"
    assert parse_report(PLAIN, Q).results == ()
    for raw in [
        b"",
        b"\x00\xff\xfe" * 1000,
        b"Content-Type: multipart/report; boundary=\n\n--",
        b"x" * 2_000_000,
    ]:
        assert parse_report(raw, Q).kind == "not_bounce"
