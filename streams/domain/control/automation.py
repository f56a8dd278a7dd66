"""Automation rules on raw SMTP replies, in the spirit of Momentum adaptive rules,
PowerMTA backoff patterns and KumoMTA traffic shaping automation (TSA).

A rule has regexes (any one matching the reply text fires it), an optional filter on
provider groups and recipient domains, a trigger, one or more actions, a duration and
a scope. The throttle controller applies the actions; this module only parses rules
and counts trigger hits.

Our format (``[[automation]]`` tables in ``mx_rules.toml`` and in operator files)::

    [[automation]]
    name = "yahoo-tss04"            # unique; an operator rule with the same name replaces it
    groups = ["yahoo"]              # optional, default: every group
    domains = ["example.com"]       # optional, default: every domain
    regex = '\\[TSS?04\\]'          # string or list of strings (Python re, searched)
    trigger = "immediate"           # default; or "N/period": "5/1h", "10/hr", "3/30m"
    action = "suspend"              # throttle_down | set_limit | suspend
    limits = { max_rate_per_hour = 60, max_connections = 1 }   # set_limit only
    duration = "2h"                 # "90m", "3 hours", "1h 30m" or seconds (int)
    scope = "ip_group"              # group (default) | ip_group

Trigger ``N/period`` fires when N matching replies for one controlled key fall within
the period (a sliding count); the count restarts after it fires. ``immediate`` is 1.

KumoMTA ``shaping.toml`` (``load_kumo_shaping``): automation tables under
``["default"]`` (every domain), ``[provider."name"]`` (provider name → our group, via
``KUMO_PROVIDER_GROUPS`` or the same name) and ``["domain"]`` (that domain; with
``group_of`` and mx_rollup on, the domain's whole provider group, as KumoMTA rolls a
domain up to its MX site). KumoMTA applies automation per egress source x site, so
its rules get scope ``ip_group`` (the controller falls back to the group key when a
signal has no sending IP); ``SetDomainConfig`` gets scope ``group``.

==============================================  =========================================
KumoMTA action                                  Ours
==============================================  =========================================
``"Suspend"``                                   suspend (ip_group) for ``duration``
``{SetConfig={name="max_message_rate"}}``       set_limit max_rate_per_hour (converted
                                                from "N/s|m|h|d" to per hour), ip_group
``{SetConfig={name="connection_limit"}}``       set_limit max_connections, ip_group
``{SetConfig={name="max_deliveries_per_         set_limit max_messages_per_connection,
connection"}}``                                 ip_group
``{SetDomainConfig=...}`` (same three names)    as SetConfig, scope group
SetConfig / SetDomainConfig, other names        ignored with a warning (no such setting)
(enable_tls, max_connection_rate, ...)
``"SuspendTenant"``, ``"SuspendCampaign"``      ignored with a warning (no tenant or
                                                campaign dimension in our settings)
``"Bounce"``, ``"BounceTenant"``,               ignored with a warning (the controller
``"BounceCampaign"``                            never bounces queued mail)
==============================================  =========================================

A KumoMTA rule whose actions are all ignored is dropped (with the warnings above).
Triggers: ``"Immediate"`` and ``{Threshold="N/period"}`` (period s|sec|second,
m|min|minute, h|hr|hour, d|day; "1,000" and "1_000" accepted). ``match_internal`` is
ignored: KumoMTA-internal responses arrive as the MTA's own doing (origin ``local``)
and make no signal, so no rule counts them. Malformed rules raise
``AutomationError`` naming the rule's location and the problem.
"""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ActionKind = Literal["throttle_down", "set_limit", "suspend"]
Scope = Literal["group", "ip_group"]
LimitField = Literal["max_rate_per_hour", "max_connections", "max_messages_per_connection"]

LIMIT_FIELDS: tuple[LimitField, ...] = (
    "max_rate_per_hour",
    "max_connections",
    "max_messages_per_connection",
)

# KumoMTA provider names (policy-extras/shaping.toml) that differ from our group names.
KUMO_PROVIDER_GROUPS: dict[str, str] = {
    "outlook": "microsoft",
    "office365": "microsoft",
    "office365-dane": "microsoft",
}

_KUMO_CONFIG_FIELDS: dict[str, LimitField] = {
    "max_message_rate": "max_rate_per_hour",
    "connection_limit": "max_connections",
    "max_deliveries_per_connection": "max_messages_per_connection",
}
_KUMO_IGNORED_ACTIONS = {
    "SuspendTenant", "SuspendCampaign", "Bounce", "BounceTenant", "BounceCampaign",
}  # fmt: skip

_UNIT_SECONDS: dict[str, int] = {}
for _names, _secs in (
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("m", "min", "mins", "minute", "minutes"), 60),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "week", "weeks"), 604800),
):
    for _name in _names:
        _UNIT_SECONDS[_name] = _secs

_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")


class AutomationError(ValueError):
    """A malformed automation rule; the message names where and what."""


class ShapingWarning(UserWarning):
    """A KumoMTA shaping feature we accept but do not apply."""


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    # set_limit only: (field, value) pairs, value in our units (rate per hour).
    limits: tuple[tuple[LimitField, int], ...] = ()


@dataclass(frozen=True, slots=True)
class AutomationRule:
    name: str
    patterns: tuple[re.Pattern[str], ...]
    actions: tuple[Action, ...]
    duration_s: int
    scope: Scope = "group"
    trigger_count: int = 1  # 1 = immediate
    trigger_period_s: int = 0
    groups: frozenset[str] | None = None  # None: every group
    domains: frozenset[str] | None = None  # None: every domain
    source: str = ""  # where the rule came from, for reasons shown to operators

    def matches(self, reply: str, domain: str, group: str) -> bool:
        if self.groups is not None and group not in self.groups:
            return False
        if self.domains is not None and domain not in self.domains:
            return False
        return any(p.search(reply) for p in self.patterns)


class TriggerCounter:
    """Sliding count of one rule's matches for one key, in event time (ms)."""

    __slots__ = ("hits",)

    def __init__(self, hits: Iterable[int] = ()) -> None:
        self.hits: deque[int] = deque(sorted(hits))

    def hit(self, rule: AutomationRule, time_ms: int) -> bool:
        """Record a match; True when the rule fires (the count then restarts)."""
        if rule.trigger_count <= 1:
            return True
        self.hits.append(time_ms)
        self.prune(rule, time_ms)
        if len(self.hits) >= rule.trigger_count:
            self.hits.clear()
            return True
        return False

    def prune(self, rule: AutomationRule, now_ms: int) -> None:
        horizon = now_ms - rule.trigger_period_s * 1000
        while self.hits and self.hits[0] <= horizon:
            self.hits.popleft()

    def to_dict(self) -> dict[str, Any]:
        return {"hits": list(self.hits)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TriggerCounter:
        return cls(int(t) for t in data["hits"])


def parse_duration(value: object) -> int:
    """Seconds from an int (seconds) or text such as "90m", "3 hours", "1h 30m"."""
    if isinstance(value, bool):
        raise AutomationError(f"invalid duration {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise AutomationError(f"duration must be positive, got {value}")
        return value
    if not isinstance(value, str):
        raise AutomationError(f"invalid duration {value!r}")
    pos, total = 0, 0.0
    while pos < len(value):
        m = _DURATION_PART.match(value, pos)
        if m is None or m.group(2).lower() not in _UNIT_SECONDS:
            raise AutomationError(f"invalid duration {value!r}")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
        pos = m.end()
    if total <= 0:
        raise AutomationError(f"invalid duration {value!r}")
    return int(total)


def parse_rate(spec: str) -> tuple[int, int]:
    """(count, period seconds) from "N/unit" (KumoMTA ThrottleSpec) or "N/duration"."""
    count_text, sep, period_text = spec.removeprefix("local:").partition("/")
    if not sep:
        raise AutomationError(f"expected 'count/period', got {spec!r}")
    try:
        count = int(count_text.replace(",", "").replace("_", "").strip())
    except ValueError:
        raise AutomationError(f"invalid count in {spec!r}") from None
    if count <= 0:
        raise AutomationError(f"count must be positive in {spec!r}")
    period_text = period_text.strip()
    period = _UNIT_SECONDS.get(period_text.lower()) or parse_duration(period_text)
    return count, period


def _string_list(value: object, what: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise AutomationError(f"{what} must be a string or a non-empty list of strings")
    return items


def _compile(value: object) -> tuple[re.Pattern[str], ...]:
    out = []
    for text in _string_list(value, "regex"):
        try:
            out.append(re.compile(text))
        except re.error as exc:
            raise AutomationError(f"invalid regex {text!r}: {exc}") from None
    return tuple(out)


_OUR_KEYS = {
    "name", "groups", "domains", "regex", "trigger", "action", "limits", "duration", "scope",
}  # fmt: skip


def parse_rule(table: Mapping[str, Any], source: str) -> AutomationRule:
    """One rule in our format; raises AutomationError naming the rule."""
    name = table.get("name")
    label = f"automation rule {name!r}" if isinstance(name, str) else "automation rule"
    try:
        if not isinstance(name, str) or not name:
            raise AutomationError("'name' is required")
        unknown = set(table) - _OUR_KEYS
        if unknown:
            raise AutomationError(f"unknown keys {sorted(unknown)}")
        if "regex" not in table:
            raise AutomationError("'regex' is required")
        patterns = _compile(table["regex"])
        kind = table.get("action")
        if kind not in ("throttle_down", "set_limit", "suspend"):
            raise AutomationError(
                f"action must be throttle_down, set_limit or suspend, got {kind!r}"
            )
        limits: list[tuple[LimitField, int]] = []
        raw_limits = table.get("limits", {})
        if kind == "set_limit":
            if not isinstance(raw_limits, dict) or not raw_limits:
                raise AutomationError("set_limit needs a non-empty 'limits' table")
            for key, value in raw_limits.items():
                if key not in LIMIT_FIELDS:
                    raise AutomationError(f"unknown limit {key!r}, expected one of {LIMIT_FIELDS}")
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise AutomationError(f"limit {key} must be a positive integer")
                limits.append((key, value))
        elif raw_limits:
            raise AutomationError("'limits' only applies to action set_limit")
        scope = table.get("scope", "group")
        if scope not in ("group", "ip_group"):
            raise AutomationError(f"scope must be group or ip_group, got {scope!r}")
        if "duration" not in table:
            raise AutomationError("'duration' is required")
        duration = parse_duration(table["duration"])
        trigger = table.get("trigger", "immediate")
        if not isinstance(trigger, str):
            raise AutomationError(f"invalid trigger {trigger!r}")
        count, period = (1, 0) if trigger.lower() == "immediate" else parse_rate(trigger)
        groups = table.get("groups")
        domains = table.get("domains")
        return AutomationRule(
            name=name,
            patterns=patterns,
            actions=(Action(kind, tuple(limits)),),
            duration_s=duration,
            scope=scope,
            trigger_count=count,
            trigger_period_s=period,
            groups=None if groups is None else frozenset(_string_list(groups, "groups")),
            domains=None
            if domains is None
            else frozenset(d.lower() for d in _string_list(domains, "domains")),
            source=source,
        )
    except AutomationError as exc:
        raise AutomationError(f"{source}: {label}: {exc}") from None


# --- KumoMTA shaping.toml -------------------------------------------------------------


def _kumo_actions(raw: object, where: str) -> list[Action]:
    items = raw if isinstance(raw, list) else [raw]
    actions: list[Action] = []
    for item in items:
        if item == "Suspend":
            actions.append(Action("suspend"))
        elif isinstance(item, str) and item in _KUMO_IGNORED_ACTIONS:
            warnings.warn(f"{where}: action {item} is not supported, ignored", ShapingWarning, 2)
        elif isinstance(item, dict) and len(item) == 1:
            ((verb, body),) = item.items()
            if verb not in ("SetConfig", "SetDomainConfig") or not isinstance(body, dict):
                raise AutomationError(f"unknown action {item!r}")
            actions.extend(_kumo_set_config(verb, body, where))
        else:
            raise AutomationError(f"unknown action {item!r}")
    return actions


def _kumo_set_config(verb: str, body: Mapping[str, Any], where: str) -> list[Action]:
    name, value = body.get("name"), body.get("value")
    if not isinstance(name, str) or value is None:
        raise AutomationError(f"{verb} needs 'name' and 'value', got {dict(body)!r}")
    field = _KUMO_CONFIG_FIELDS.get(name)
    if field is None:
        warnings.warn(f"{where}: {verb} {name} has no equivalent, ignored", ShapingWarning, 3)
        return []
    if field == "max_rate_per_hour":
        if not isinstance(value, str):
            raise AutomationError(f"max_message_rate must be a string like '100/h', got {value!r}")
        count, period = parse_rate(value)
        number = max(1, round(count * 3600 / period))
    else:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise AutomationError(f"{name} must be an integer, got {value!r}") from None
        if number <= 0:
            raise AutomationError(f"{name} must be positive, got {value!r}")
    return [Action("set_limit", ((field, number),))]


def _kumo_rule(
    table: object,
    where: str,
    groups: frozenset[str] | None,
    domains: frozenset[str] | None,
) -> AutomationRule | None:
    try:
        if not isinstance(table, dict):
            raise AutomationError("automation entry must be a table")
        for key in ("regex", "action", "duration"):
            if key not in table:
                raise AutomationError(f"'{key}' is required")
        patterns = _compile(table["regex"])
        actions = _kumo_actions(table["action"], where)
        duration = parse_duration(table["duration"])
        trigger = table.get("trigger", "Immediate")
        if trigger == "Immediate":
            count, period = 1, 0
        elif isinstance(trigger, dict) and set(trigger) == {"Threshold"}:
            count, period = parse_rate(str(trigger["Threshold"]))
        else:
            raise AutomationError(f"trigger must be 'Immediate' or {{Threshold=...}}: {trigger!r}")
    except AutomationError as exc:
        raise AutomationError(f"{where}: {exc}") from None
    if not actions:
        warnings.warn(f"{where}: no supported action, rule dropped", ShapingWarning, 2)
        return None
    domain_wide = _is_domain_wide(table["action"])
    merged = _merge_limits(actions)
    return AutomationRule(
        name=where,
        patterns=patterns,
        actions=merged,
        duration_s=duration,
        scope="group" if domain_wide else "ip_group",
        trigger_count=count,
        trigger_period_s=period,
        groups=groups,
        domains=domains,
        source="kumo shaping",
    )


def _is_domain_wide(raw: object) -> bool:
    items = raw if isinstance(raw, list) else [raw]
    return any(isinstance(i, dict) and "SetDomainConfig" in i for i in items)


def _merge_limits(actions: list[Action]) -> tuple[Action, ...]:
    """One set_limit action carrying every limit (KumoMTA lists them one by one)."""
    limits = tuple(pair for a in actions if a.kind == "set_limit" for pair in a.limits)
    out = [a for a in actions if a.kind != "set_limit"]
    if limits:
        out.append(Action("set_limit", limits))
    return tuple(out)


def _read_source(source: str | Path) -> tuple[str, str]:
    """(text, label): a Path or a one-line str naming a file is read; else it is text."""
    if isinstance(source, Path) or ("\n" not in source and Path(source).is_file()):
        path = Path(source)
        return path.read_text(encoding="utf-8"), str(path)
    return source, "<shaping text>"


def load_kumo_shaping(
    source: str | Path, *, group_of: Callable[[str], str] | None = None
) -> list[AutomationRule]:
    """Automation rules of a KumoMTA shaping.toml (or .json) file, or of its text.

    ``group_of`` maps a domain to its provider group (``MxRules.group_for`` with no MX);
    when given, a domain block with mx_rollup on applies to that whole group."""
    text, label = _read_source(source)
    try:
        data = json.loads(text) if label.endswith(".json") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise AutomationError(f"{label}: invalid shaping file: {exc}") from None
    rules: list[AutomationRule] = []
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise AutomationError(f"{label}: [{name}] must be a table")
        if name == "provider":
            for provider, block in entry.items():
                if not isinstance(block, dict):
                    raise AutomationError(f"{label}: provider.{provider} must be a table")
                group = KUMO_PROVIDER_GROUPS.get(provider, provider)
                rules += _kumo_block(block, f"{label}: provider.{provider}", group, None)
        elif name == "default":
            rules += _kumo_block(entry, f"{label}: default", None, None)
        else:
            domain = name.lower()
            group = group_of(domain) if group_of and entry.get("mx_rollup", True) else None
            if group is not None and group != "default":
                rules += _kumo_block(entry, f"{label}: {name}", group, None)
            else:
                rules += _kumo_block(entry, f"{label}: {name}", None, domain)
    return rules


def _kumo_block(
    block: Mapping[str, Any], where: str, group: str | None, domain: str | None
) -> list[AutomationRule]:
    raw = block.get("automation", [])
    if not isinstance(raw, list):
        raise AutomationError(f"{where}: automation must be an array of tables")
    groups = None if group is None else frozenset({group})
    domains = None if domain is None else frozenset({domain})
    out = []
    for i, table in enumerate(raw):
        rule = _kumo_rule(table, f"{where}.automation[{i}]", groups, domains)
        if rule is not None:
            out.append(rule)
    return out
