"""A generated sample campaign: realistic send, bounce and retry histories, seeded.

Used by ``make demo``, the end-to-end tests and benchmarks. Addresses live on reserved
example domains mixed with the big providers' domains; local parts are synthetic.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Event = tuple[str, dict[str, Any]]  # (family, event)

# (domain, share, MX host suffix)
DOMAINS: tuple[tuple[str, float, str], ...] = (
    ("gmail.com", 0.34, "gmail-smtp-in.l.google.com"),
    ("yahoo.com", 0.12, "mta5.am0.yahoodns.net"),
    ("hotmail.com", 0.10, "hotmail-com.olc.protection.outlook.com"),
    ("outlook.com", 0.06, "outlook-com.olc.protection.outlook.com"),
    ("aol.com", 0.04, "mx-aol.mail.gm0.yahoodns.net"),
    ("icloud.com", 0.05, "mx01.mail.icloud.com"),
    ("orange.fr", 0.04, "smtp-in.orange.fr"),
    ("gmx.de", 0.04, "mx00.emig.gmx.net"),
    ("example.org", 0.11, "mx.example.org"),
    ("example.net", 0.10, "mx.example.net"),
)

RATE_LIMIT_REPLIES: dict[str, tuple[int, str, str]] = {
    "gmail.com": (
        421,
        "4.7.28",
        "421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating "
        "from your IP address. To protect our users from spam, mail sent from your IP "
        "address has been temporarily rate limited. - gsmtp",
    ),
    "yahoo.com": (
        421,
        "4.7.0",
        "421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected "
        "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
    ),
    "hotmail.com": (
        451,
        "4.7.650",
        "451 4.7.650 The mail server [192.0.2.10] has been temporarily rate limited due to "
        "IP reputation. For e-mail delivery information, see https://postmaster.live.com",
    ),
}
GENERIC_DEFERRAL = (421, "4.4.2", "421 4.4.2 Connection timed out while talking to remote host")
USER_UNKNOWN = (550, "5.1.1", "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown")
MAILBOX_FULL = (452, "4.2.2", "452 4.2.2 Mailbox full: the recipient's mailbox is over quota")
NO_SUCH_DOMAIN = (None, None, "Host or domain name not found. Name service error for name={dom}")


@dataclass(frozen=True)
class SampleCampaign:
    recipients: int = 1000
    seed: int = 1
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    delivery_id: str = "D1"
    sending_ip: str = "192.0.2.10"
    invalid_share: float = 0.05
    mailbox_full_share: float = 0.03
    bad_domain_share: float = 0.01
    deferral_share: float = 0.15
    complaint_share: float = 0.005
    async_bounce_share: float = 0.005

    def events(self) -> list[Event]:
        """All events, sorted by event time (ties keep generation order)."""
        rng = random.Random(self.seed)
        out: list[Event] = []
        for i in range(self.recipients):
            out.extend(self._history(rng, i))
        out.sort(key=lambda fe: fe[1]["event_time"])
        return out

    def _history(self, rng: random.Random, i: int) -> Iterator[Event]:
        domain, mx = _pick_domain(rng)
        rcpt = f"user{i:07d}.{rng.randrange(10**6):06d}@{domain}"
        mid = f"{self.delivery_id}-M{i:07d}"
        t = self.start_ms + i * 20 + rng.randrange(20)
        seq = 0

        def ev(family: str, kind: str, at: int, **extra: Any) -> Event:
            nonlocal seq
            seq += 1
            base = {
                "event_id": f"{mid}-{seq}",
                "event_time": at,
                "delivery_id": self.delivery_id,
                "message_id": mid,
                "recipient": rcpt,
                "kind": kind,
            }
            base.update(extra)
            return family, base

        yield ev("send", "relayed", t, sending_ip=self.sending_ip, campaign_id="C1")
        roll = rng.random()
        attempt = 1
        t += 1000 + rng.randrange(4000)
        if roll < self.invalid_share:
            code, status, text = USER_UNKNOWN
            yield ev(
                "bounce",
                "sync",
                t,
                smtp_code=code,
                enhanced_status=status,
                diagnostic=text.format(rcpt="recipient"),
                mx_host=mx,
                sending_ip=self.sending_ip,
                attempt=1,
            )
            return
        roll -= self.invalid_share
        if roll < self.bad_domain_share:
            _, _, text = NO_SUCH_DOMAIN
            for attempt in range(1, 4):
                yield ev(
                    "retry",
                    "deferred",
                    t,
                    attempt=attempt,
                    diagnostic=text.format(dom=domain),
                    next_attempt_time=t + 3_600_000 * attempt,
                )
                t += 3_600_000 * attempt
            yield ev("retry", "expired", t, attempt=attempt, diagnostic=text.format(dom=domain))
            return
        roll -= self.bad_domain_share
        if roll < self.mailbox_full_share:
            code, status, text = MAILBOX_FULL
            for attempt in range(1, 4):
                yield ev(
                    "bounce",
                    "sync",
                    t,
                    smtp_code=code,
                    enhanced_status=status,
                    diagnostic=text,
                    mx_host=mx,
                    sending_ip=self.sending_ip,
                    attempt=attempt,
                )
                yield ev(
                    "retry",
                    "deferred",
                    t + 1,
                    attempt=attempt,
                    smtp_code=code,
                    enhanced_status=status,
                    diagnostic=text,
                    next_attempt_time=t + 7_200_000,
                )
                t += 7_200_000
            return
        roll -= self.mailbox_full_share
        if roll < self.deferral_share:
            code, status, text = RATE_LIMIT_REPLIES.get(domain, GENERIC_DEFERRAL)
            for attempt in range(1, 1 + rng.randrange(1, 3)):
                yield ev(
                    "retry",
                    "deferred",
                    t,
                    attempt=attempt,
                    smtp_code=code,
                    enhanced_status=status,
                    diagnostic=text,
                    mx_host=mx,
                    sending_ip=self.sending_ip,
                    next_attempt_time=t + 600_000,
                )
                t += 600_000
        yield ev("send", "delivered", t, mx_host=mx, sending_ip=self.sending_ip)
        roll = rng.random()
        if roll < self.complaint_share:
            yield ev("bounce", "complaint", t + 3_600_000, mx_host=mx)
        elif roll < self.complaint_share + self.async_bounce_share:
            code, status, text = USER_UNKNOWN
            yield ev(
                "bounce",
                "async",
                t + 1_800_000,
                smtp_code=code,
                enhanced_status=status,
                diagnostic=text.format(rcpt="recipient"),
                mx_host=mx,
            )


def _pick_domain(rng: random.Random) -> tuple[str, str]:
    roll = rng.random()
    for domain, share, mx in DOMAINS:
        if roll < share:
            return domain, mx
        roll -= share
    return DOMAINS[-1][0], DOMAINS[-1][2]
