"""Qualifications per second on one core for a realistic reply mix.

Prints one JSON line: uncached and cached rates of Qualifier.qualify, and, as a
baseline on the same inputs, the rate of a trivial function (parsing the codes out of
the text). The mix is built from templates of provider replies, generic coded replies
and code-less connection errors, with varying addresses, IPs and ids, so that the
cached figure shows a realistic hit rate rather than a single repeated line.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

from streams.domain.bounce.qualifier import Qualifier
from streams.domain.bounce.rules import parse_reply

TEMPLATES = [
    "550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1 "
    "double-checking the recipient's email address for typos or 550-5.1.1 unnecessary spaces. "
    "Learn more at 550 5.1.1 https://support.google.com/mail/?p=NoSuchUser {id} - gsmtp",
    "452-4.2.2 The email account that you tried to reach is over quota. Please direct 452 4.2.2 "
    "the recipient to https://support.google.com/mail/?p=OverQuotaTemp {id} - gsmtp",
    "421-4.7.28 [{ip}] Our system has detected an unusual rate of unsolicited mail originating "
    "from your IP address. To protect our users from spam, mail sent from your IP address has "
    "been temporarily rate limited. {id} - gsmtp",
    "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user "
    "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
    "554 delivery error: dd This user doesn't have a yahoo.com account ({user}@yahoo.com) [0] - "
    "mta{n}.mail.bf1.yahoo.com",
    "550 5.5.0 Requested action not taken: mailbox unavailable ({id})",
    "451 4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP reputation. "
    "For e-mail delivery information, see https://postmaster.live.com (S3114)",
    "550 5.7.1 Unfortunately, messages from [{ip}] weren't sent. Please contact your Internet "
    "service provider since part of their network is on our block list (S3150).",
    "550 5.1.1 <{user}@icloud.com>: user does not exist",
    "552 5.2.2 <{user}@icloud.com>: user is over quota",
    "554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org",
    "550 5.1.1 <{user}@example.org>: Recipient address rejected: User unknown in local recipient "
    "table",
    "450 4.2.0 <{user}@example.org>: Recipient address rejected: Greylisted, see "
    "http://postgrey.schweikert.ch/",
    "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC "
    "policy",
    "550 5.1.1 Adresse d au moins un destinataire invalide. Invalid recipient. OFR_416 [416]",
    "550 Message was not accepted -- invalid mailbox. Local mailbox {user}@mail.ru is "
    "unavailable: user not found",
    "552 5.2.2 Mailbox size limit exceeded",
    "Sorry, no mailbox here by that name. (#5.1.1)",
    "connect to mx{n}.example.net[{ip}]:25: Connection refused",
    "conversation with mx{n}.example.net[{ip}] timed out while receiving the initial server "
    "greeting",
    "Host or domain name not found. Name service error for name=x{n}.example type=MX: Host not "
    "found",
    "TLS handshake failed: certificate verify failed for mx{n}.example.net",
    "550 5.7.1 Message rejected",
    "421 4.3.0 Temporary System Problem. Try again later ({id})",
    "550 5.1.1 {user}@example.com... User unknown",
]


def build_mix(n: int, seed: int = 7) -> list[tuple[int | None, str | None, str]]:
    rng = random.Random(seed)
    mix = []
    for _ in range(n):
        text = rng.choice(TEMPLATES).format(
            id=f"{rng.getrandbits(48):x}",
            ip=f"192.0.2.{rng.randint(1, 254)}",
            user=f"user{rng.randint(1, 5000)}",
            n=rng.randint(1, 50),
        )
        code, status = parse_reply(text)
        # Half the inputs come with the code fields filled, as from an MTA log.
        if rng.random() < 0.5:
            mix.append((code, ".".join(map(str, status)) if status else None, text))
        else:
            mix.append((None, None, text))
    return mix


def rate(fn: Callable[[int | None, str | None, str], object], mix: list, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for code, status, text in mix:
            fn(code, status, text)
    return rounds * len(mix) / (time.perf_counter() - start)


def main() -> None:
    mix = build_mix(20_000)
    uncached = Qualifier(cache_size=0)
    cached = Qualifier(cache_size=8192)
    rate(uncached.qualify, mix[:2000], 1)  # warm-up: compile buckets
    print(
        json.dumps(
            {
                "inputs": len(mix),
                "templates": len(TEMPLATES),
                "uncached_per_s": round(rate(uncached.qualify, mix, 3)),
                "cached_per_s": round(rate(cached.qualify, mix, 3)),
                "baseline_parse_codes_per_s": round(rate(lambda c, s, t: parse_reply(t), mix, 3)),
            }
        )
    )


if __name__ == "__main__":
    main()
