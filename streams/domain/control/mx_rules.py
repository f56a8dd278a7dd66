"""MX rules: per provider group sending limits and feedback thresholds.

The shipped defaults live in ``mx_rules.toml`` next to this module (documented there,
one ``[group.NAME]`` table per provider group plus ``[[automation]]`` rules). An
optional operator file of the same layout is merged over them: a ``[group.NAME]``
table overrides the fields it sets in that group (nested tables key by key) or adds
a group; an ``[[automation]]`` rule replaces the shipped rule of the same name or is
added. Every group inherits unset fields from ``default``, after the operator merge,
so an operator change to ``default`` reaches every group that does not override it.

Defaults (``[group.default]``): retry 900 s, decrease factor 0.5, increase step 10 %
of baseline, adjust interval 300 s, quiet interval 1800 s, min volume 200, suspension
4 h, thresholds invalid 3 % / 10 %, complaint 0.2 % / 0.5 %, block 5 % / 20 %
(throttle / suspend), warm-up from 50/h on day 1 to 40 000/h on day 30.

Domain → group: exact domain names first, then wildcard patterns (``fnmatch`` style,
``yahoo.*``) in file order, then the MX host against ``mx_suffixes`` (equal, or ending
in "." + suffix), else ``default``. Results are cached (bounded).

A malformed file raises ``MxRulesError`` naming the file, the group and the problem.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from streams.domain.control.automation import (
    AutomationError,
    AutomationRule,
    load_kumo_shaping,
    parse_rule,
)

SHIPPED_FILE = "mx_rules.toml"
DEFAULT_GROUP = "default"
_CACHE_LIMIT = 100_000

_LIMIT_KEYS = ("max_connections", "max_messages_per_connection", "max_rate_per_hour")
_THRESHOLD_KEYS = (
    "invalid_throttle",
    "invalid_suspend",
    "complaint_throttle",
    "complaint_suspend",
    "block_throttle",
    "block_suspend",
)
_INT_KEYS = ("retry_interval_s", "adjust_interval_s", "quiet_interval_s", "min_volume", "suspend_s")
_REQUIRED_KEYS = (*_LIMIT_KEYS, *_INT_KEYS, "decrease_factor", "increase_step", "thresholds")
_GROUP_KEYS = {
    "domains", "mx_suffixes", "decrease_factor", "increase_step", "thresholds", "warmup",
    *_LIMIT_KEYS, *_INT_KEYS,
}  # fmt: skip


class MxRulesError(ValueError):
    """A malformed MX rules file."""


@dataclass(frozen=True, slots=True)
class Limit:
    baseline: int
    min: int
    max: int

    def clamp(self, value: int) -> int:
        return max(self.min, min(self.max, value))


@dataclass(frozen=True, slots=True)
class Thresholds:
    invalid_throttle: float
    invalid_suspend: float
    complaint_throttle: float
    complaint_suspend: float
    block_throttle: float
    block_suspend: float


@dataclass(frozen=True, slots=True)
class GroupRules:
    name: str
    domains: tuple[str, ...]
    mx_suffixes: tuple[str, ...]
    max_connections: Limit
    max_messages_per_connection: Limit
    max_rate_per_hour: Limit
    retry_interval_s: int
    decrease_factor: float
    increase_step: float
    adjust_interval_s: int
    quiet_interval_s: int
    min_volume: int
    suspend_s: int
    thresholds: Thresholds
    warmup: tuple[tuple[int, int], ...]  # (day since first use, max per hour), days ascending

    def warmup_cap(self, day: int) -> int | None:
        """Hourly cap on warm-up day ``day`` (1 = first day); None once warm-up is over."""
        if not self.warmup or day > self.warmup[-1][0]:
            return None
        cap = self.warmup[0][1]
        for start, per_hour in self.warmup:
            if start <= day:
                cap = per_hour
        return cap


class MxRules:
    """Resolved groups and automation rules; ``group_for`` is cached."""

    def __init__(self, groups: Mapping[str, GroupRules], automation: list[AutomationRule]) -> None:
        self.groups = dict(groups)
        self.automation = list(automation)
        self._exact: dict[str, str] = {}
        self._wildcards: list[tuple[re.Pattern[str], str]] = []
        self._suffixes: list[tuple[str, str]] = []
        for g in self.groups.values():
            for pattern in g.domains:
                if any(c in pattern for c in "*?["):
                    self._wildcards.append((re.compile(fnmatch.translate(pattern)), g.name))
                else:
                    self._exact[pattern] = g.name
            self._suffixes += [(s, g.name) for s in g.mx_suffixes]
        self._cache: dict[tuple[str, str | None], str] = {}

    def group(self, name: str) -> GroupRules:
        return self.groups.get(name) or self.groups[DEFAULT_GROUP]

    def group_for(self, domain: str, mx_host: str | None = None) -> str:
        key = (domain, mx_host)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._resolve(domain.lower().rstrip("."), mx_host)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _resolve(self, domain: str, mx_host: str | None) -> str:
        if domain in self._exact:
            return self._exact[domain]
        for pattern, name in self._wildcards:
            if pattern.match(domain):
                return name
        if mx_host:
            host = mx_host.lower().rstrip(".")
            for suffix, name in self._suffixes:
                if host == suffix or host.endswith("." + suffix):
                    return name
        return DEFAULT_GROUP


def load_mx_rules(
    operator_file: str | Path | None = None, kumo_shaping: str | Path | None = None
) -> MxRules:
    """Shipped rules, with ``operator_file`` merged over them when given, plus the
    automation rules of an operator's KumoMTA ``shaping.toml`` (``load_kumo_shaping``)."""
    shipped_text = (
        resources.files("streams.domain.control").joinpath(SHIPPED_FILE).read_text("utf-8")
    )
    raw = _parse(shipped_text, SHIPPED_FILE)
    groups: dict[str, dict[str, Any]] = dict(raw.get("group", {}))
    origins = dict.fromkeys(groups, SHIPPED_FILE)
    automation_tables: list[tuple[dict[str, Any], str]] = [
        (t, SHIPPED_FILE) for t in raw.get("automation", [])
    ]
    if operator_file is not None:
        path = Path(operator_file)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise MxRulesError(f"{path}: cannot read: {exc}") from None
        extra = _parse(text, str(path))
        for name, table in extra.get("group", {}).items():
            _check_table(table, str(path), name)
            groups[name] = _merge(groups.get(name, {}), table)
            origins[name] = str(path)
        by_name = {t.get("name"): i for i, (t, _) in enumerate(automation_tables)}
        for table in extra.get("automation", []):
            index = by_name.get(table.get("name"))
            if index is None:
                automation_tables.append((table, str(path)))
            else:
                automation_tables[index] = (table, str(path))
    if DEFAULT_GROUP not in groups:
        raise MxRulesError(f"{SHIPPED_FILE}: group 'default' is missing")
    resolved = {}
    for name, table in groups.items():
        _check_table(table, origins[name], name)
        merged = table if name == DEFAULT_GROUP else _merge(groups[DEFAULT_GROUP], table)
        resolved[name] = _build_group(name, merged, origins[name])
    _check_overlaps(resolved, origins)
    rules = []
    for table, source in automation_tables:
        try:
            rules.append(parse_rule(table, source))
        except AutomationError as exc:
            raise MxRulesError(str(exc)) from None
    loaded = MxRules(resolved, rules)
    if kumo_shaping is not None:
        try:
            loaded.automation += load_kumo_shaping(
                Path(kumo_shaping), group_of=lambda domain: loaded.group_for(domain)
            )
        except (AutomationError, OSError) as exc:
            raise MxRulesError(f"{kumo_shaping}: {exc}") from None
    return loaded


def _parse(text: str, label: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MxRulesError(f"{label}: invalid TOML: {exc}") from None
    unknown = set(data) - {"group", "automation"}
    if unknown:
        raise MxRulesError(f"{label}: unknown top-level keys {sorted(unknown)}")
    if not isinstance(data.get("group", {}), dict):
        raise MxRulesError(f"{label}: 'group' must be a table of groups")
    automation = data.get("automation", [])
    if not isinstance(automation, list) or not all(isinstance(t, dict) for t in automation):
        raise MxRulesError(f"{label}: 'automation' must be an array of tables ([[automation]])")
    return data


def _check_table(table: object, label: str, name: str) -> None:
    if not isinstance(table, dict):
        raise MxRulesError(f"{label}: group {name!r}: must be a table")
    unknown = set(table) - _GROUP_KEYS
    if unknown:
        raise MxRulesError(f"{label}: group {name!r}: unknown keys {sorted(unknown)}")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build_group(name: str, t: Mapping[str, Any], label: str) -> GroupRules:
    def fail(problem: str) -> MxRulesError:
        return MxRulesError(f"{label}: group {name!r}: {problem}")

    def integer(key: str, value: object, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise fail(f"{key} must be an integer >= {minimum}, got {value!r}")
        return value

    def fraction(key: str, value: object, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(f"{key} must be a number, got {value!r}")
        if not low < value <= high:
            raise fail(f"{key} must be in ({low}, {high}], got {value!r}")
        return float(value)

    def names(key: str) -> tuple[str, ...]:
        value = t.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(f"{key} must be a list of non-empty strings")
        return tuple(v.lower().rstrip(".") for v in value)

    missing = [k for k in _REQUIRED_KEYS if k not in t]
    if missing:
        raise fail(f"missing keys {missing}")
    limits = {}
    for key in _LIMIT_KEYS:
        spec = t[key]
        if not isinstance(spec, dict) or set(spec) != {"baseline", "min", "max"}:
            raise fail(f"{key} must be a table with exactly baseline, min and max")
        lim = Limit(*(integer(f"{key}.{k}", spec[k]) for k in ("baseline", "min", "max")))
        if not lim.min <= lim.baseline <= lim.max:
            got = f"{lim.min}/{lim.baseline}/{lim.max}"
            raise fail(f"{key}: need min <= baseline <= max, got {got}")
        limits[key] = lim
    th = t["thresholds"]
    if not isinstance(th, dict) or set(th) != set(_THRESHOLD_KEYS):
        raise fail(f"thresholds must set exactly {list(_THRESHOLD_KEYS)}")
    thresholds = Thresholds(
        *(fraction(f"thresholds.{k}", th[k], 0.0, 1.0) for k in _THRESHOLD_KEYS)
    )
    for kind in ("invalid", "complaint", "block"):
        if getattr(thresholds, f"{kind}_throttle") > getattr(thresholds, f"{kind}_suspend"):
            raise fail(f"thresholds: {kind}_throttle must not exceed {kind}_suspend")
    warmup = _warmup(t.get("warmup", []), fail)
    return GroupRules(
        name=name,
        domains=names("domains"),
        mx_suffixes=names("mx_suffixes"),
        max_connections=limits["max_connections"],
        max_messages_per_connection=limits["max_messages_per_connection"],
        max_rate_per_hour=limits["max_rate_per_hour"],
        retry_interval_s=integer("retry_interval_s", t["retry_interval_s"]),
        decrease_factor=fraction("decrease_factor", t["decrease_factor"], 0.0, 0.99),
        increase_step=fraction("increase_step", t["increase_step"], 0.0, 1.0),
        adjust_interval_s=integer("adjust_interval_s", t["adjust_interval_s"]),
        quiet_interval_s=integer("quiet_interval_s", t["quiet_interval_s"]),
        min_volume=integer("min_volume", t["min_volume"]),
        suspend_s=integer("suspend_s", t["suspend_s"]),
        thresholds=thresholds,
        warmup=warmup,
    )


def _warmup(value: object, fail: Any) -> tuple[tuple[int, int], ...]:
    steps: list[tuple[int, int]] = []
    if not isinstance(value, list):
        raise fail("warmup must be a list of [day, max_per_hour] pairs")
    for item in value:
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in item)
        )
        if not ok:
            raise fail(f"warmup entries must be [day, max_per_hour] > 0, got {item!r}")
        if steps and item[0] <= steps[-1][0]:
            raise fail(f"warmup days must increase, got {item[0]} after {steps[-1][0]}")
        steps.append((item[0], item[1]))
    return tuple(steps)


def _check_overlaps(groups: Mapping[str, GroupRules], origins: Mapping[str, str]) -> None:
    owner: dict[str, str] = {}
    for g in groups.values():
        for pattern in g.domains:
            if pattern in owner and owner[pattern] != g.name:
                raise MxRulesError(
                    f"{origins[g.name]}: group {g.name!r}: domain {pattern!r} is also in group "
                    f"{owner[pattern]!r}"
                )
            owner[pattern] = g.name
