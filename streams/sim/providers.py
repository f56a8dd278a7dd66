"""Simulated mailbox providers: hidden capacities, real-world replies, penalties and blocks.

Each provider has a hidden capacity per sending IP (messages per hour, refilled
continuously, at most one minute's worth in reserve) and optionally one for all IPs
together. Above it, it answers with its real rate-limit reply (421 4.7.28 for Gmail,
[TSS04] for Yahoo, 4.7.650 for Microsoft, ...). Like the real ones, it punishes a sender
that keeps hammering: when too large a share of an IP's attempts over the last ten minutes
was deferred, that IP's capacity drops for a while. When the invalid-recipient or the
complaint rate of an IP over the last hour runs high, it blocks the IP for a while with
a temporary block reply. Bad addresses get the provider's ordinary 550/452 replies.

Every domain of the long tail is its own small provider, with a capacity drawn from the
seed. Unknown domains have no provider (no MX): ``mx_host`` returns None.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from streams.sim.campaign import Truth

_MINUTE_MS = 60_000
_PENALTY_WINDOW_MIN = 10
_BLOCK_WINDOW_MIN = 60


class Outcome(Enum):
    DELIVERED = "delivered"
    RATE_LIMITED = "rate_limited"
    BLOCKED = "blocked"
    USER_UNKNOWN = "user_unknown"
    MAILBOX_FULL = "mailbox_full"
    DISABLED = "disabled"
    CONNECTION_FAILED = "connection_failed"  # no SMTP session: a timeout, not a reply


@dataclass(frozen=True, slots=True)
class Reply:
    code: int | None
    status: str | None
    text: str  # "{ip}" stands for the sending IP

    def render(self, ip: str) -> Reply:
        return replace(self, text=self.text.replace("{ip}", ip))


def _r(code: int, status: str | None, text: str) -> Reply:
    return Reply(code, status, text)


GENERIC_USER_UNKNOWN = _r(
    550,
    "5.1.1",
    "550 5.1.1 <recipient>: Recipient address rejected: User unknown in virtual mailbox table",
)
GENERIC_MAILBOX_FULL = _r(
    452, "4.2.2", "452 4.2.2 <recipient>: Recipient address rejected: Mailbox full"
)
GENERIC_DISABLED = _r(550, "5.2.1", "550 5.2.1 <recipient>: Account disabled")
GENERIC_BLOCK = _r(
    554,
    "5.7.1",
    "554 5.7.1 [BL21] Connections will not be accepted from {ip}, because the ip is "
    "in Spamhaus's list; see https://www.spamhaus.org/query/ip/{ip}",
)
GENERIC_RATE_LIMIT = _r(
    450,
    "4.7.1",
    "450 4.7.1 <recipient>: Recipient address rejected: Too many messages from "
    "{ip}, rate limit exceeded",
)


@dataclass(frozen=True)
class ProviderProfile:
    name: str
    mx_host: str  # "{domain}" stands for the recipient domain
    capacity_per_hour: int  # per sending IP
    rate_limit: Reply
    user_unknown: Reply = GENERIC_USER_UNKNOWN
    mailbox_full: Reply = GENERIC_MAILBOX_FULL
    disabled: Reply = GENERIC_DISABLED
    block: Reply = GENERIC_BLOCK
    ip_capacity: Mapping[str, int] = field(default_factory=dict)  # per-IP overrides
    total_per_hour: int | None = None  # for all sending IPs together
    penalty_share: float = 0.3  # deferred share over ten minutes that triggers the penalty
    penalty_min_attempts: int = 100
    penalty_factor: float = 0.3  # capacity multiplier while penalised
    penalty_s: int = 1800
    block_invalid_rate: float = 0.08
    block_complaint_rate: float = 0.003
    block_min_volume: int = 200
    block_min_complaints: int = 3  # one complaint never makes a rate
    block_s: int = 3600

    def capacity(self, ip: str) -> int:
        return self.ip_capacity.get(ip, self.capacity_per_hour)


SENDING_IPS: tuple[str, ...] = ("192.0.2.10", "192.0.2.11")

# Hidden capacities are per sending IP; compare with the baselines of mx_rules.toml
# (google 36 000/h, yahoo and microsoft 18 000/h, orange 3 600/h, ...): fixed limits are
# too high for some providers and too low for others, and the second IP of the pool has
# a weaker reputation at Yahoo.
PROFILES: dict[str, ProviderProfile] = {
    p.name: p
    for p in (
        ProviderProfile(
            "google",
            "gmail-smtp-in.l.google.com",
            15_000,
            _r(
                421,
                "4.7.28",
                "421-4.7.28 [{ip}] Our system has detected an unusual rate of "
                "unsolicited mail originating from your IP address. To protect our users from "
                "spam, mail sent from your IP address has been temporarily rate limited. - gsmtp",
            ),
            user_unknown=_r(
                550,
                "5.1.1",
                "550-5.1.1 The email account that you tried to reach does not "
                "exist. Please try double-checking the recipient's email address for typos or "
                "unnecessary spaces. - gsmtp",
            ),
            mailbox_full=_r(
                452,
                "4.2.2",
                "452-4.2.2 The email account that you tried to reach is over "
                "quota. Please direct the recipient to "
                "https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
            ),
            disabled=_r(
                550,
                "5.2.1",
                "550-5.2.1 The email account that you tried to reach is disabled. - gsmtp",
            ),
            block=_r(
                421,
                "4.7.0",
                "421-4.7.0 [{ip}] This message is suspicious due to the very low "
                "reputation of the sending IP address. - gsmtp",
            ),
            total_per_hour=40_000,
        ),
        ProviderProfile(
            "yahoo",
            "mta5.am0.yahoodns.net",
            20_000,
            _r(
                421,
                "4.7.0",
                "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to "
                "unexpected volume or user complaints - 4.16.55.1; see "
                "https://postmaster.yahooinc.com/error-codes",
            ),
            user_unknown=_r(
                554,
                None,
                "554 delivery error: dd This user doesn't have a yahoo.com account "
                "- mta1234.mail.bf1.yahoo.com",
            ),
            mailbox_full=_r(552, None, "552 1 Requested mail action aborted, mailbox full"),
            block=_r(
                554,
                "5.7.9",
                "554 5.7.9 Message not accepted for policy reasons.  See "
                "https://senders.yahooinc.com/error-codes",
            ),
            ip_capacity={"192.0.2.11": 9_000},
            penalty_factor=0.15,
        ),
        ProviderProfile(
            "microsoft",
            "hotmail-com.olc.protection.outlook.com",
            20_000,
            _r(
                451,
                "4.7.650",
                "451 4.7.650 The mail server [{ip}] has been temporarily rate "
                "limited due to IP reputation. For e-mail delivery information, see "
                "https://postmaster.live.com (S775) [AM0PR01MB1234.eurprd01.prod.exchangelabs.com]",
            ),
            user_unknown=_r(
                550,
                "5.5.0",
                "550 5.5.0 Requested action not taken: mailbox unavailable "
                "(S2017062302). [AM0PR01MB1234.eurprd01.prod.exchangelabs.com]",
            ),
            block=_r(
                550,
                "5.7.1",
                "550 5.7.1 Unfortunately, messages from [{ip}] weren't sent. "
                "Please contact your Internet service provider since part of their network is "
                "on our block list (S3150).",
            ),
        ),
        ProviderProfile(
            "apple",
            "mx01.mail.icloud.com",
            6_000,
            _r(
                421,
                "4.7.0",
                "421 4.7.0 Too many messages from {ip}, rate limit exceeded, "
                "please try again later",
            ),
        ),
        ProviderProfile(
            "comcast",
            "mx1.comcast.net",
            30_000,
            _r(
                421,
                None,
                "421 resimta-po-12v.sys.comcast.net comcast {ip} Comcast RL000010 "
                "Too many sessions opened. Please see https://postmaster.comcast.net/smtp-error-codes.php#RL000010",
            ),
        ),
        ProviderProfile(
            "orange",
            "smtp-in.orange.fr",
            1_800,
            _r(
                421,
                "4.7.0",
                "421 4.7.0 smtp-in.orange.fr OFR_104 [104] Trop de connexions, "
                "veuillez ressayer plus tard.",
            ),
        ),
        ProviderProfile(
            "gmx",
            "mx00.emig.gmx.net",
            9_000,
            _r(
                421,
                "4.7.0",
                "421-4.7.0 gmx.net (mxgmx) Nemesis ESMTP Service not available; "
                "too many connections from {ip}, rate limit exceeded",
            ),
        ),
        ProviderProfile(
            "mailru",
            "mxs.mail.ru",
            3_000,
            _r(450, "4.7.1", "450 4.7.1 Message rate limit exceeded for {ip}, try again later"),
        ),
        ProviderProfile(
            "yandex",
            "mx.yandex.ru",
            9_000,
            _r(
                421,
                "4.7.0",
                "421 4.7.0 Too many messages from your IP address {ip}, please try again later",
            ),
        ),
    )
}
TAIL_PROFILE = ProviderProfile("tail", "mx.{domain}", 3_600, GENERIC_RATE_LIMIT)
TAIL_CAPACITIES = (900, 1_800, 3_600, 7_200, 14_400)

DOMAIN_PROVIDER: dict[str, str] = {
    "gmail.com": "google",
    "googlemail.com": "google",
    "yahoo.com": "yahoo",
    "aol.com": "yahoo",
    "ymail.com": "yahoo",
    "hotmail.com": "microsoft",
    "outlook.com": "microsoft",
    "live.com": "microsoft",
    "icloud.com": "apple",
    "me.com": "apple",
    "comcast.net": "comcast",
    "orange.fr": "orange",
    "wanadoo.fr": "orange",
    "gmx.de": "gmx",
    "web.de": "gmx",
    "mail.ru": "mailru",
    "yandex.ru": "yandex",
}


class _Bucket:
    """Continuous refill at ``per_hour``, at most one minute's worth in reserve."""

    __slots__ = ("last_ms", "tokens")

    def __init__(self) -> None:
        self.tokens: float | None = None
        self.last_ms = 0

    def take(self, per_hour: float, now_ms: int) -> bool:
        per_min = per_hour / 60
        if self.tokens is None:
            self.tokens = per_min
        else:
            elapsed = max(0, now_ms - self.last_ms) / _MINUTE_MS
            self.tokens = min(per_min, self.tokens + elapsed * per_min)
        self.last_ms = max(self.last_ms, now_ms)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _IpState:
    bucket: _Bucket = field(default_factory=_Bucket)
    # minute index → [attempts, deferred, invalid, delivered, complaints]
    minutes: dict[int, list[int]] = field(default_factory=dict)
    current_minute: int = -1
    penalty_until: int = 0
    blocked_until: int = 0

    def counts(self, minute: int) -> list[int]:
        row = self.minutes.get(minute)
        if row is None:
            row = self.minutes[minute] = [0, 0, 0, 0, 0]
        return row

    def total(self, since_minute: int, until_minute: int) -> list[int]:
        out = [0, 0, 0, 0, 0]
        for minute, row in self.minutes.items():
            if since_minute <= minute < until_minute:
                out = [a + b for a, b in zip(out, row, strict=True)]
        return out


class Provider:
    """One receiving service (a large provider, or one domain of the long tail)."""

    def __init__(self, name: str, profile: ProviderProfile, capacity: int | None = None) -> None:
        self.name = name
        self.profile = profile
        self._capacity = capacity
        self.scale = 1.0
        self._ips: dict[str, _IpState] = {}
        self._total = _Bucket()

    def capacity(self, ip: str) -> float:
        base = self._capacity if self._capacity is not None else self.profile.capacity(ip)
        return base * self.scale

    def settle(self, now_ms: int) -> None:
        """Bring state that changes with time alone up to ``now_ms`` (none here)."""

    def _ip(self, ip: str) -> _IpState:
        state = self._ips.get(ip)
        if state is None:
            state = self._ips[ip] = _IpState()
        return state

    def _judge(self, st: _IpState, minute: int, now_ms: int) -> None:
        """Once per minute: penalise hammering, block on bad list hygiene."""
        if minute == st.current_minute:
            return
        st.current_minute = minute
        p = self.profile
        for old in [m for m in st.minutes if m < minute - _BLOCK_WINDOW_MIN]:
            del st.minutes[old]
        attempts, deferred, *_ = st.total(minute - _PENALTY_WINDOW_MIN, minute)
        if (
            attempts >= p.penalty_min_attempts
            and deferred / attempts >= p.penalty_share
            and now_ms >= st.penalty_until
        ):
            st.penalty_until = now_ms + p.penalty_s * 1000
        attempts, _, invalid, delivered, complaints = st.total(minute - _BLOCK_WINDOW_MIN, minute)
        bad_list = attempts >= p.block_min_volume and invalid / attempts >= p.block_invalid_rate
        complained = (
            delivered >= p.block_min_volume
            and complaints >= p.block_min_complaints
            and complaints / delivered >= p.block_complaint_rate
        )
        if (bad_list or complained) and now_ms >= st.blocked_until:
            st.blocked_until = now_ms + p.block_s * 1000

    def attempt(self, ip: str, truth: Truth, now_ms: int) -> tuple[Outcome, Reply | None]:
        p = self.profile
        st = self._ip(ip)
        minute = now_ms // _MINUTE_MS
        self._judge(st, minute, now_ms)
        row = st.counts(minute)
        row[0] += 1
        if now_ms < st.blocked_until:
            row[1] += 1
            return Outcome.BLOCKED, p.block.render(ip)
        capacity = self.capacity(ip) * (p.penalty_factor if now_ms < st.penalty_until else 1.0)
        over_total = False
        if st.bucket.take(capacity, now_ms):
            over_total = p.total_per_hour is not None and not self._total.take(
                p.total_per_hour * self.scale, now_ms
            )
        else:
            over_total = True
        if over_total:
            row[1] += 1
            return Outcome.RATE_LIMITED, p.rate_limit.render(ip)
        if truth is Truth.INVALID:
            row[2] += 1
            return Outcome.USER_UNKNOWN, p.user_unknown
        if truth is Truth.MAILBOX_FULL:
            return Outcome.MAILBOX_FULL, p.mailbox_full
        if truth is Truth.DISABLED:
            row[2] += 1
            return Outcome.DISABLED, p.disabled
        row[3] += 1
        return Outcome.DELIVERED, None

    def complaint(self, ip: str, now_ms: int) -> None:
        self._ip(ip).counts(now_ms // _MINUTE_MS)[4] += 1

    def penalised(self, ip: str, now_ms: int) -> bool:
        return now_ms < self._ip(ip).penalty_until

    def blocked(self, ip: str, now_ms: int) -> bool:
        return now_ms < self._ip(ip).blocked_until


class ProviderNetwork:
    """Every provider the campaign's domains reach; tail capacities drawn from ``seed``."""

    def __init__(
        self,
        seed: int,
        profiles: Mapping[str, ProviderProfile] | None = None,
        capacity_scale: float = 1.0,
    ) -> None:
        self.profiles = dict(PROFILES if profiles is None else profiles)
        self.seed = seed
        self.capacity_scale = capacity_scale  # < 1 puts a small campaign under pressure
        self._providers: dict[str, Provider] = {}

    def provider_name(self, domain: str) -> str | None:
        """The provider a domain belongs to (tail domains are their own); None: no MX."""
        if domain.endswith(".invalid"):
            return None
        return DOMAIN_PROVIDER.get(domain, domain)

    def provider(self, domain: str) -> Provider | None:
        name = self.provider_name(domain)
        return None if name is None else self.named(name)

    def named(self, name: str) -> Provider:
        """The provider of that name (a large provider, or a tail domain)."""
        p = self._providers.get(name)
        if p is None:
            profile = self.profiles.get(name)
            if profile is not None:
                p = self.make(name, profile, None)
            else:
                # Drawn from the name, so a domain's capacity does not depend on sending order.
                draw = random.Random(f"tail:{self.seed}:{name}")
                p = self.make(name, TAIL_PROFILE, draw.choice(TAIL_CAPACITIES))
            p.scale = self.capacity_scale
            self._providers[name] = p
        return p

    def make(self, name: str, profile: ProviderProfile, capacity: int | None) -> Provider:
        """A new provider; scenario worlds return their own kinds."""
        return Provider(name, profile, capacity)

    def mx_host(self, domain: str) -> str | None:
        p = self.provider(domain)
        return None if p is None else p.profile.mx_host.replace("{domain}", domain)

    def group_label(self, domain: str) -> str:
        """Reporting label: the provider's name, "tail" for small domains, "nx" for no MX."""
        name = self.provider_name(domain)
        if name is None:
            return "nx"
        return name if name in self.profiles else "tail"
