"""Which KumoMTA egress sources and sites serve which provider groups and domains.

The ingest routes hand every KumoMTA log record they take to ``note``; the TSA routes
(``kumo_routes.py``) read ``known_sites`` to know where a throttle setting applies: the
egress sources (tables of shaping.toml) and the sites (ready queues to suspend).

Redis, so that every instance of the service agrees: one sorted set
``<prefix>:kumo:sites`` whose members are JSON arrays ``[target, source, site, domain]``
(``target`` is ``group:<name>``, or ``domain:<domain>`` for a domain of the default group)
scored with the time they were last seen (epoch ms). Members unseen for ``TTL_S`` age out;
past ``MAX_SITES`` the oldest go. Each instance writes a member at most every
``REFRESH_S``, so a busy KumoMTA costs Redis a few writes a minute, not one per record.
While Redis fails, ``note`` keeps going (the records are on the broker already): what it
could not write is written by a later call, tried again after ``RETRY_S``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from streams.adapters.kumo_tsa import KnownSite
from streams.adapters.kumomta import site_seen
from streams.domain.control.mx_rules import DEFAULT_GROUP, MxRules
from streams.service.context import ServiceContext
from streams.serving.views import ViewStore

log = logging.getLogger(__name__)

TTL_S = 7 * 86_400
REFRESH_S = 300
RETRY_S = 5.0
MAX_SITES = 50_000
# ctx.extras keys: the MX rules (loaded once), this module's state, and the event that
# wakes the TSA routes' suspension broadcaster when a new site is learnt.
RULES = "kumo.rules"
STATE = "kumo.sites"
WAKE = "kumo.wake"


@dataclass
class _Tracker:
    # (target, source, site) → (domain stored with it, monotonic time written)
    written: dict[tuple[str, str, str], tuple[str, float]] = field(default_factory=dict)
    retry_at: float = 0.0


def sites_key(views: ViewStore) -> str:
    return f"{views.prefix}:kumo:sites"


def rules_of(ctx: ServiceContext) -> MxRules:
    rules = ctx.extras.get(RULES)
    if rules is None:
        rules = ctx.extras[RULES] = ctx.settings.mx_rules()
    return rules


async def note(ctx: ServiceContext, records: list[dict[str, Any]]) -> None:
    """Learn the egress source, site and domain of each delivery attempt among ``records``."""
    rules = rules_of(ctx)
    tracker: _Tracker = ctx.extras.setdefault(STATE, _Tracker())
    now = time.monotonic()
    fresh: dict[tuple[str, str, str], str] = {}
    for record in records:
        seen = site_seen(record)
        if seen is None:
            continue
        group = rules.group_for(seen.domain, seen.mx_host)
        target = f"domain:{seen.domain}" if group == DEFAULT_GROUP else f"group:{group}"
        ident = (target, seen.egress_source, seen.site)
        held = tracker.written.get(ident)
        # One domain per site and source is enough to name its table: keep the first, or
        # the first in the group by name (not by its MX), as the renderer prefers those.
        domain = held[0] if held else seen.domain
        if held and rules.group_for(held[0]) != group and rules.group_for(seen.domain) == group:
            domain = seen.domain
        if held is None or domain != held[0] or now - held[1] >= REFRESH_S:
            fresh[ident] = domain
    if not fresh or now < tracker.retry_at:
        return
    if len(tracker.written) > 2 * MAX_SITES:
        tracker.written.clear()
    for ident, domain in fresh.items():
        tracker.written[ident] = (domain, now)
    members = {json.dumps([*ident, domain]): time.time() * 1000 for ident, domain in fresh.items()}
    try:
        await asyncio.to_thread(_write, ctx.views, members)
    except redis.RedisError as exc:
        log.warning("KumoMTA sites not saved (%s); trying again in %.0f s", exc, RETRY_S)
        tracker.retry_at = now + RETRY_S
        for ident in fresh:
            tracker.written.pop(ident, None)
        return
    wake = ctx.extras.get(WAKE)
    if wake is not None:
        wake.set()


def _write(views: ViewStore, members: dict[str, float]) -> None:
    key = sites_key(views)
    now_ms = time.time() * 1000
    pipe = views.client.pipeline(transaction=False)
    pipe.zadd(key, members)
    pipe.zremrangebyscore(key, "-inf", now_ms - TTL_S * 1000)
    pipe.zremrangebyrank(key, 0, -MAX_SITES - 1)
    pipe.execute()


def known_sites(views: ViewStore) -> list[KnownSite]:
    """The sites seen within ``TTL_S`` (blocking: run it in a thread)."""
    since = time.time() * 1000 - TTL_S * 1000
    out = []
    for member in views.client.zrangebyscore(sites_key(views), since, "+inf"):
        try:
            target, source, site, domain = json.loads(member)
        except (ValueError, TypeError):
            continue  # not written by this module
        if all(isinstance(v, str) for v in (target, source, site, domain)):
            out.append(KnownSite(target, source, site, domain))
    return out
