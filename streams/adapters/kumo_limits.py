"""The limits an operator's own KumoMTA shaping.toml sets (pure: parses text, opens nothing).

The HTTP service never publishes a KumoMTA option above the operator's own configured
value (``streams/adapters/kumo_tsa.py``). KumoMTA's value syntaxes, as its ``throttle``
crate reads them: ``max_message_rate`` a ThrottleSpec ("600/h", "local:10/s", "1,000/5m",
",max_burst=N"); ``connection_limit`` a LimitSpec (an integer, "local:N", or
``{limit, force_local}``); ``max_deliveries_per_connection`` an integer. A malformed value
raises ``KumoShapingError`` naming the file, the table and the option.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streams.domain.control.automation import KUMO_PROVIDER_GROUPS
from streams.domain.control.mx_rules import DEFAULT_GROUP

# kumod's own values where no shaping file sets one (kumo-api-types/src/egress_path.rs).
KUMO_DEFAULTS: dict[str, int] = {"connection_limit": 32, "max_deliveries_per_connection": 1024}
# The KumoMTA options we publish, and our setting field behind each (sorted by option).
OPTIONS: dict[str, str] = {
    "connection_limit": "max_connections",
    "max_deliveries_per_connection": "max_messages_per_connection",
    "max_message_rate": "max_rate_per_hour",
}
_PERIODS = {"h": 3600, "hr": 3600, "hour": 3600, "m": 60, "min": 60, "minute": 60}
_PERIODS |= {"s": 1, "sec": 1, "second": 1, "d": 86400, "day": 86400}


class KumoShapingError(ValueError):
    """A KumoMTA shaping file we cannot read limits from; the message says where."""


@dataclass(frozen=True, slots=True)
class Cap:
    """An operator limit: its size (per hour for a rate) and the value as they wrote it."""

    size: float
    value: str | int
    local: bool = False  # "local:": per kumod node even where throttles are shared


def _number(text: str, where: str) -> int:
    digits = text.replace(",", "").replace("_", "").strip()
    # ASCII only: str.isdigit() also accepts "¹" or "٣", which int() refuses or reads.
    if not (digits.isascii() and digits.isdigit()):
        raise KumoShapingError(f"{where}: invalid number {text!r}")
    return int(digits)


def parse_rate(value: object, where: str) -> Cap:
    """A KumoMTA ThrottleSpec ("600/h", "local:10/s", "1,000/5m,max_burst=5")."""
    if not isinstance(value, str):
        raise KumoShapingError(f"{where}: expected a string such as '600/h', got {value!r}")
    spec = value.removeprefix("local:")
    spec, _, burst = spec.partition(",max_burst=")
    if burst:
        _number(burst, where)
    limit_text, slash, period_text = spec.partition("/")
    period_match = re.fullmatch(r"(\d*)([a-z]+)", period_text)
    if not slash or period_match is None or period_match[2] not in _PERIODS:
        raise KumoShapingError(f"{where}: expected 'limit/period' such as '600/h', got {value!r}")
    limit = _number(limit_text, where)
    period = _PERIODS[period_match[2]] * int(period_match[1] or 1)
    if limit < 1 or period < 1:
        raise KumoShapingError(f"{where}: limit and period must be positive in {value!r}")
    return Cap(limit * 3600 / period, value, value.startswith("local:"))


def parse_limit(value: object, where: str) -> Cap:
    """A KumoMTA LimitSpec: an integer, "local:N" / "1,000", or {limit, force_local}."""
    if isinstance(value, dict):
        limit, local = value.get("limit"), value.get("force_local", False)
        if set(value) - {"limit", "force_local"} or not isinstance(local, bool):
            raise KumoShapingError(f"{where}: expected {{limit, force_local}}, got {value!r}")
        cap = parse_limit(limit, where)
        return Cap(cap.size, f"local:{cap.value}" if local else cap.value, local)
    if isinstance(value, str):
        limit = _number(value.removeprefix("local:"), where)
        local = value.startswith("local:")
    elif isinstance(value, int) and not isinstance(value, bool):
        limit, local = value, False
    else:
        raise KumoShapingError(f"{where}: expected a positive integer, got {value!r}")
    if limit < 1:
        raise KumoShapingError(f"{where}: limit must be 1 or more, got {value!r}")
    return Cap(limit, f"local:{limit}" if local else limit, local)


def parse_count(value: object, where: str) -> Cap:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KumoShapingError(f"{where}: expected an integer >= 0, got {value!r}")
    return Cap(value, value)


_PARSERS: dict[str, Callable[[object, str], Cap]] = {
    "connection_limit": parse_limit,
    "max_deliveries_per_connection": parse_count,
    "max_message_rate": parse_rate,
}


@dataclass(frozen=True, slots=True)
class _Entry:
    params: Mapping[str, Cap]
    sources: Mapping[str, Mapping[str, Cap]]
    mx_rollup: bool = True


def _limits(table: object, where: str) -> dict[str, Cap]:
    if not isinstance(table, dict):
        raise KumoShapingError(f"{where}: must be a table")
    return {o: _PARSERS[o](table[o], f"{where}.{o}") for o in OPTIONS if o in table}


def _quoted(name: str) -> str:
    """A table name as the file writes it (``["gmail.com"]``)."""
    return json.dumps(name, ensure_ascii=False)


def _entry(table: object, where: str) -> _Entry:
    params = _limits(table, where)
    rollup = table.get("mx_rollup", True) if isinstance(table, dict) else True
    sources = table.get("sources", {}) if isinstance(table, dict) else {}
    if not isinstance(rollup, bool):
        raise KumoShapingError(f"{where}.mx_rollup: must be true or false")
    if not isinstance(sources, dict):
        raise KumoShapingError(f"{where}.sources: must be a table of sources")
    by_source = {s: _limits(t, f"{where}.sources.{_quoted(s)}") for s, t in sources.items()}
    return _Entry(params, by_source, rollup)


class OperatorShaping:
    """The limits an operator's own KumoMTA shaping.toml sets, with kumod's precedence
    (``ShapingInner::get_egress_path_config``): ``default``, then matching providers, their
    sources, the domain (or its site), and the domain's source table.

    A provider matches our group of the same name (or ``KUMO_PROVIDER_GROUPS``) or a
    ``DomainSuffix`` of the table's domain (``MXSuffix`` needs DNS: the name mapping stands
    in). Without DNS we cannot tell which site an operator's domain table rolls up to, so
    the cap of a site table is the lowest of every effective value that may apply to it:
    through the operator's table of the same domain, through each of their ``mx_rollup``
    tables of a domain of the same group, and through none. An option set nowhere is
    kumod's own default (``KUMO_DEFAULTS``; no message rate). ``provider_*`` limits are
    separate throttles that kumod keeps applying, so they are no cap here."""

    def __init__(self, text: str, label: str, group_of: Callable[[str], str]) -> None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise KumoShapingError(f"{label}: invalid TOML: {exc}") from None
        self.group_of = group_of
        self.default = _entry(data.get("default", {}), f"{label}: [default]")
        self.providers: list[tuple[str, tuple[str, ...], _Entry]] = []
        providers = data.get("provider", {})
        if not isinstance(providers, dict):
            raise KumoShapingError(f"{label}: provider: must be a table of providers")
        for name, table in providers.items():
            where = f"{label}: [provider.{_quoted(name)}]"
            rules = table.get("match", []) if isinstance(table, dict) else []
            if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
                raise KumoShapingError(f"{where}.match: must be a list of tables")
            suffixes = tuple(str(r["DomainSuffix"]).lower() for r in rules if "DomainSuffix" in r)
            group = KUMO_PROVIDER_GROUPS.get(name, name)
            self.providers.append((group, suffixes, _entry(table, where)))
        self.domains = {
            name.lower().rstrip("."): _entry(table, f"{label}: [{_quoted(name)}]")
            for name, table in data.items()
            if name not in ("default", "provider")
        }

    def caps(self, domain: str, group: str, source: str, rollup: bool) -> dict[str, Cap | None]:
        """The operator's limit of each option for one table and source (None: no limit)."""
        providers = [
            e for g, sfx, e in self.providers if g == group or any(domain.endswith(s) for s in sfx)
        ]
        base = [self.default.params, *(e.params for e in providers)]
        base += [e.sources.get(source, {}) for e in providers]
        own = self.domains.get(domain)
        entries = [own] if own else []
        if rollup and group != DEFAULT_GROUP:
            entries += [
                e
                for d, e in self.domains.items()
                if d != domain and e.mx_rollup and self.group_of(d) == group
            ]
        chains = [[*base, e.params, e.sources.get(source, {})] for e in entries]
        if own is None or (rollup and not own.mx_rollup):
            chains.append(base)
        out: dict[str, Cap | None] = {}
        for option in OPTIONS:
            found = [_effective(chain, option) for chain in chains]
            limited = [cap for cap in found if cap is not None]
            # A path without a limit takes any value: the lowest limit of the others caps.
            out[option] = min(limited, key=lambda c: c.size) if limited else None
        return out


def _effective(chain: list[Mapping[str, Cap]], option: str) -> Cap | None:
    """The value kumod takes along one path of tables: the last that sets it."""
    values = [layer[option] for layer in chain if option in layer]
    return values[-1] if values else default_cap(option)


def default_cap(option: str) -> Cap | None:
    """kumod's own limit of an option no shaping file sets (None: unlimited)."""
    default = KUMO_DEFAULTS.get(option)
    return Cap(default, default) if default else None
