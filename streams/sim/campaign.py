"""The simulated Campaign: recipients over a realistic domain mix, each with a hidden truth.

The truth (valid, invalid, mailbox full, disabled, unknown domain, complainer) is what the
mailbox provider knows and the MTA and the pipeline must find out. Local parts are synthetic
and domains of the long tail use reserved names (``.example``, ``.invalid``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

# (domain, share of all recipients) of the large providers; the rest is the long tail.
LARGE_DOMAINS: tuple[tuple[str, float], ...] = (
    ("gmail.com", 0.30),
    ("googlemail.com", 0.01),
    ("yahoo.com", 0.08),
    ("aol.com", 0.03),
    ("ymail.com", 0.005),
    ("hotmail.com", 0.07),
    ("outlook.com", 0.05),
    ("live.com", 0.02),
    ("icloud.com", 0.04),
    ("me.com", 0.005),
    ("comcast.net", 0.03),
    ("orange.fr", 0.03),
    ("wanadoo.fr", 0.005),
    ("gmx.de", 0.025),
    ("web.de", 0.02),
    ("mail.ru", 0.01),
    ("yandex.ru", 0.01),
)
TAIL_DOMAINS = 300  # Zipf-distributed small domains (companies, ISPs, universities)
UNKNOWN_DOMAINS = 50


class Truth(Enum):
    VALID = "valid"
    INVALID = "invalid"  # the mailbox does not exist: 5.1.1
    MAILBOX_FULL = "mailbox_full"  # over quota for the whole run: 4.2.2 until validity ends
    DISABLED = "disabled"  # 5.2.1
    UNKNOWN_DOMAIN = "unknown_domain"  # no MX: the MTA fails it after its DNS lookup


@dataclass(frozen=True, slots=True)
class Recipient:
    index: int
    address: str
    domain: str
    truth: Truth
    complains: bool  # marks the message as spam after delivery (feedback loop)


@dataclass(frozen=True)
class CampaignSpec:
    recipients: int
    seed: int
    delivery_id: str = "SIM1"
    invalid_share: float = 0.008
    mailbox_full_share: float = 0.002
    disabled_share: float = 0.002
    unknown_domain_share: float = 0.003
    complaint_share: float = 0.0005
    # (domain, weight) instead of the default mix of large providers and long tail
    domain_mix: tuple[tuple[str, float], ...] | None = None


def tail_domain(k: int) -> str:
    return f"biz{k:03d}.example"


def domain_weights() -> tuple[list[str], list[float]]:
    """All deliverable domains and their shares (large providers, then the Zipf tail)."""
    domains = [d for d, _ in LARGE_DOMAINS]
    weights = [w for _, w in LARGE_DOMAINS]
    tail_share = 1.0 - sum(weights)
    harmonic = sum(1 / (k + 1) for k in range(TAIL_DOMAINS))
    for k in range(TAIL_DOMAINS):
        domains.append(tail_domain(k))
        weights.append(tail_share / ((k + 1) * harmonic))
    return domains, weights


def build_recipients(spec: CampaignSpec) -> list[Recipient]:
    """The campaign's recipients, the same for the same spec."""
    rng = random.Random(f"campaign:{spec.seed}")
    if spec.domain_mix is None:
        domains, weights = domain_weights()
    else:
        domains, weights = [d for d, _ in spec.domain_mix], [w for _, w in spec.domain_mix]
    picked = rng.choices(domains, weights, k=spec.recipients)
    out = []
    for i, domain in enumerate(picked):
        roll = rng.random()
        truth = Truth.VALID
        for share, t in (
            (spec.invalid_share, Truth.INVALID),
            (spec.mailbox_full_share, Truth.MAILBOX_FULL),
            (spec.disabled_share, Truth.DISABLED),
            (spec.unknown_domain_share, Truth.UNKNOWN_DOMAIN),
        ):
            if roll < share:
                truth = t
                break
            roll -= share
        if truth is Truth.UNKNOWN_DOMAIN:
            domain = f"nx{rng.randrange(UNKNOWN_DOMAINS):02d}.invalid"
        complains = truth is Truth.VALID and rng.random() < spec.complaint_share
        out.append(Recipient(i, f"u{i:07d}@{domain}", domain, truth, complains))
    return out
