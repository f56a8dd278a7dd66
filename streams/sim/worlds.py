"""Scenario worlds: the providers a run meets and the campaigns it sends.

- ``steady``: one campaign against the providers of ``providers.PROFILES`` as they are.
- ``shock``: one campaign; a band of Gmail's recipients complains, and once 40% of its
  messages are delivered Gmail tightens: its capacity drops to a fifth for four hours.
- ``outage``: one campaign; once 30% of Gmail's messages are delivered its MX hosts time out
  for 30 minutes: connection failures with the MTA's own diagnostic, no reply at all.
- ``warmup``: 30 daily campaigns (each to a tenth as many recipients as the run's size, a
  different draw each day) from a warm IP and a new one. Every large provider gives the
  new IP 2% of its capacity (at least 120 an hour) and judges it once a day: a day with
  fewer than 10% of its attempts deferred doubles that share, a worse day halves it.
- ``recurring``: the same list once a day for a week.

Campaigns of the multi-day worlds have a validity of 20 hours, so that each one is over
before the next day's starts; the providers (their buckets, penalties and reputations)
and the control plane are the same objects for all of a world's campaigns. Worlds are
built from the seed alone; the controller sees none of this, only the replies.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from streams.sim.campaign import CampaignSpec, Recipient, Truth, build_recipients
from streams.sim.providers import (
    SENDING_IPS,
    Outcome,
    Provider,
    ProviderNetwork,
    ProviderProfile,
    Reply,
)

SCENARIOS = ("steady", "shock", "outage", "warmup", "recurring")
DAY_MS = 86_400_000
SERIES_VALIDITY_S = 20 * 3600

SHOCK_PROVIDER = "google"
SHOCK_AFTER = 0.4  # share of the provider's messages delivered before it tightens
SHOCK_FACTOR = 0.2
SHOCK_S = 4 * 3600
SPIKE_BAND = (0.3, 0.4)  # by rank among the provider's recipients: they complain more
SPIKE_SHARE = 0.03

OUTAGE_PROVIDER = "google"
OUTAGE_AFTER = 0.3
OUTAGE_S = 1800

WARMUP_DAYS = 30
WARMUP_DIVISOR = 10  # each day's campaign: a tenth of the run's size
NEW_IP = "192.0.2.20"
COLD_SHARE = 0.02  # of the provider's capacity, for a new IP
COLD_MIN_PER_HOUR = 120
CLEAN_DAY = 0.1  # deferred share below which a day counts as clean
MIN_JUDGED = 10  # attempts a day needs before the provider judges it

RECURRING_DAYS = 7


@dataclass(frozen=True)
class Campaign:
    day: int  # days after the world's first campaign
    spec: CampaignSpec
    recipients: tuple[Recipient, ...]


@dataclass
class World:
    scenario: str
    providers: ProviderNetwork
    campaigns: tuple[Campaign, ...]
    ips: tuple[str, ...]
    validity_s: int | None  # None: the MTA's default

    @property
    def span_days(self) -> int:
        return self.campaigns[-1].day


def span_days(scenario: str) -> int:
    """Days between a scenario's first campaign and its last."""
    return {"warmup": WARMUP_DAYS - 1, "recurring": RECURRING_DAYS - 1}.get(scenario, 0)


class _Triggered(Provider):
    """Counts its deliveries; the ``after``-th one starts the scenario's event."""

    def __init__(
        self, name: str, profile: ProviderProfile, capacity: int | None, after: int, span_s: int
    ) -> None:
        super().__init__(name, profile, capacity)
        self.after = after
        self.span_ms = span_s * 1000
        self.delivered = 0
        self.since: int | None = None  # when the event started

    def active(self, now_ms: int) -> bool:
        return self.since is not None and self.since <= now_ms < self.since + self.span_ms

    def _count(self, outcome: Outcome, now_ms: int) -> None:
        if outcome is Outcome.DELIVERED:
            self.delivered += 1
            if self.delivered == self.after and self.since is None:
                self.since = now_ms


class ShockProvider(_Triggered):
    """Capacity (per IP and in total) times ``factor`` while the shock lasts."""

    factor = SHOCK_FACTOR

    def attempt(self, ip: str, truth: Truth, now_ms: int) -> tuple[Outcome, Reply | None]:
        normal = self.scale
        if self.active(now_ms):
            self.scale = normal * self.factor
        try:
            outcome, reply = super().attempt(ip, truth, now_ms)
        finally:
            self.scale = normal
        self._count(outcome, now_ms)
        return outcome, reply


class OutageProvider(_Triggered):
    """No SMTP session while the outage lasts: the MTA's connections time out."""

    def attempt(self, ip: str, truth: Truth, now_ms: int) -> tuple[Outcome, Reply | None]:
        if self.active(now_ms):
            mx = self.profile.mx_host
            text = f"connect to {mx}[198.51.100.25]:25: Connection timed out"
            return Outcome.CONNECTION_FAILED, Reply(None, "4.4.1", text)
        outcome, reply = super().attempt(ip, truth, now_ms)
        self._count(outcome, now_ms)
        return outcome, reply


class ColdIpProvider(Provider):
    """Gives new IPs a share of its capacity that grows with clean days, shrinks with bad."""

    def __init__(
        self, name: str, profile: ProviderProfile, capacity: int | None, cold: Sequence[str]
    ) -> None:
        super().__init__(name, profile, capacity)
        self.warmth = dict.fromkeys(cold, COLD_SHARE)
        self._day: dict[str, int] = {}
        self._seen: dict[str, list[int]] = {}  # ip → [attempts, deferred] since the last day

    def capacity(self, ip: str) -> float:
        full = super().capacity(ip)
        share = self.warmth.get(ip, 1.0)
        return full if share >= 1.0 else max(full * share, COLD_MIN_PER_HOUR)

    def attempt(self, ip: str, truth: Truth, now_ms: int) -> tuple[Outcome, Reply | None]:
        if ip not in self.warmth:
            return super().attempt(ip, truth, now_ms)
        self._judge_day(ip, now_ms // DAY_MS)
        outcome, reply = super().attempt(ip, truth, now_ms)
        seen = self._seen.setdefault(ip, [0, 0])
        seen[0] += 1
        if outcome in (Outcome.RATE_LIMITED, Outcome.BLOCKED):
            seen[1] += 1
        return outcome, reply

    def settle(self, now_ms: int) -> None:
        for ip in self.warmth:
            self._judge_day(ip, now_ms // DAY_MS)

    def _judge_day(self, ip: str, day: int) -> None:
        if self._day.get(ip) == day:
            return
        self._day[ip] = day
        attempts, deferred = self._seen.pop(ip, [0, 0])
        if attempts < MIN_JUDGED:
            return
        share = self.warmth[ip]
        clean = deferred / attempts < CLEAN_DAY
        self.warmth[ip] = min(1.0, share * 2) if clean else max(COLD_SHARE, share / 2)


Factory = Callable[[str, ProviderProfile, int | None], Provider]


class WorldNetwork(ProviderNetwork):
    """Providers of a scenario: ``special`` kinds by name, ``large`` for every other
    provider of the profiles, the ordinary kind for the long tail."""

    def __init__(
        self,
        seed: int,
        capacity_scale: float = 1.0,
        special: Mapping[str, Factory] | None = None,
        large: Factory | None = None,
    ) -> None:
        super().__init__(seed, capacity_scale=capacity_scale)
        self.special = dict(special or {})
        self.large = large

    def make(self, name: str, profile: ProviderProfile, capacity: int | None) -> Provider:
        factory = self.special.get(name) or (self.large if name in self.profiles else None)
        return factory(name, profile, capacity) if factory else Provider(name, profile, capacity)


def _share_of(network: ProviderNetwork, recipients: Sequence[Recipient], name: str) -> list[int]:
    """Indexes (into ``recipients``) of the provider's recipients, in sending order."""
    return [i for i, r in enumerate(recipients) if network.provider_name(r.domain) == name]


def _spike(recipients: list[Recipient], mine: list[int], seed: int) -> list[Recipient]:
    rng = random.Random(f"spike:{seed}")
    lo, hi = (int(len(mine) * f) for f in SPIKE_BAND)
    out = list(recipients)
    for i in mine[lo:hi]:
        r = out[i]
        if r.truth is Truth.VALID and rng.random() < SPIKE_SHARE:
            out[i] = replace(r, complains=True)
    return out


def _triggered(
    kind: type[_Triggered], network: WorldNetwork, name: str, count: int, share: float, span_s: int
) -> None:
    after = max(1, int(count * share))
    network.special[name] = lambda n, p, c: kind(n, p, c, after, span_s)


def build_world(
    scenario: str,
    spec: CampaignSpec,
    ips: Sequence[str] = SENDING_IPS,
    capacity_scale: float = 1.0,
) -> World:
    """The world of ``scenario`` for a run of ``spec`` (its size, seed and delivery id)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    seed = spec.seed
    network = WorldNetwork(seed, capacity_scale)
    if scenario == "warmup":
        size = max(1, spec.recipients // WARMUP_DIVISOR)
        pool = (ips[0], NEW_IP)
        network.large = lambda n, p, c: ColdIpProvider(n, p, c, (NEW_IP,))
        days = [
            replace(
                spec,
                recipients=size,
                seed=seed * 100 + day,
                delivery_id=f"{spec.delivery_id}-d{day + 1}",
            )
            for day in range(WARMUP_DAYS)
        ]
        campaigns = tuple(Campaign(d, s, tuple(build_recipients(s))) for d, s in enumerate(days))
        return World(scenario, network, campaigns, pool, SERIES_VALIDITY_S)
    if scenario == "recurring":
        recipients = tuple(build_recipients(spec))
        campaigns = tuple(
            Campaign(day, replace(spec, delivery_id=f"{spec.delivery_id}-d{day + 1}"), recipients)
            for day in range(RECURRING_DAYS)
        )
        return World(scenario, network, campaigns, tuple(ips), SERIES_VALIDITY_S)
    recipients = build_recipients(spec)
    if scenario == "shock":
        mine = _share_of(network, recipients, SHOCK_PROVIDER)
        recipients = _spike(recipients, mine, seed)
        _triggered(ShockProvider, network, SHOCK_PROVIDER, len(mine), SHOCK_AFTER, SHOCK_S)
    elif scenario == "outage":
        mine = _share_of(network, recipients, OUTAGE_PROVIDER)
        _triggered(OutageProvider, network, OUTAGE_PROVIDER, len(mine), OUTAGE_AFTER, OUTAGE_S)
    return World(scenario, network, (Campaign(0, spec, tuple(recipients)),), tuple(ips), None)
