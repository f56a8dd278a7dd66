"""Throttle settings → PowerMTA's own control: queue commands and a configuration fragment.

Pure: the caller (``mta-feedback follow-throttle``) reads the throttle topic, runs the
commands and writes the file. What PowerMTA offers, and what each setting becomes:

- queue modes and suspensions have run-time commands, on queues named ``domain/vmta``
  (``*`` for every virtual MTA): ``pmta set queue --mode=backoff|normal Q``,
  ``pmta pause queue Q``, ``pmta resume queue Q``;
- rates, connections and messages per connection have none: they go into an included
  configuration fragment of ``<domain NAME>`` blocks (``max-msg-rate 600/h``,
  ``max-smtp-out N``, ``max-msg-per-connection N``, and their ``backoff-`` twins, which
  PowerMTA uses instead while a queue is in backoff mode), read on ``pmta reload``.
  An IP x group key becomes ``source-ip-max-msg-rate IP/32 N/h`` and
  ``source-ip-max-smtp-out IP/32 N`` in the group's domain blocks (PowerMTA has no
  per-source-IP messages-per-connection limit).

Keys: ``group:<group>`` covers the group's real domains (wildcard patterns such as
``yahoo.*`` name no PowerMTA queue and are left out), ``domain:<domain>`` that domain,
``ip_group:<ip>|<group>`` the group's domains on the virtual MTA of that IP (from the
operator's IP → VMTA map; without one, no queue command is possible for the key). The
``default`` group stands for every domain outside the groups: no queue name or domain
block stands for it, so it gets none. When several keys reach one queue or domain, the
most restrictive wins. No value is ever above the group's current maximum in the MX
rules, and a key whose limits are all at the group's baseline is left to PowerMTA's own
configuration.

Queue state is reconciled: ``desired_queues`` says what every queue should be at a
time (a suspension is over at ``suspended_until``), ``plan`` gives the commands from
what PowerMTA was last told to that, and ``apply_effect`` records a command that
succeeded; a failed command is planned again next time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from streams.domain.control.mx_rules import DEFAULT_GROUP, MxRules

MODES = ("normal", "backoff", "suspended", "warmup")
SCOPES = ("group", "domain", "ip_group")
ALL_VMTAS = "*"
LIMITS = ("max_rate_per_hour", "max_connections", "max_messages_per_connection")
_DOMAIN = re.compile(r"(?=.{1,253}\Z)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}")
_VMTA = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_WILDCARD = re.compile(r"[*?\[]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

HEADER = (
    "# Written by mta-feedback follow-throttle: PowerMTA limits of the throttle keys that are\n"
    "# off their baseline. Rewritten on every change; change the MX rules, not this file.\n"
)


class SettingError(ValueError):
    """A throttle record this module cannot use; the message says why (no addresses)."""


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    scope: str
    mode: str
    max_rate_per_hour: int
    max_connections: int
    max_messages_per_connection: int
    retry_interval_s: int
    suspended_until: int | None  # epoch ms
    reason: str
    version: int
    event_time: int  # epoch ms

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Setting:
        """A decoded throttle record; raises SettingError when it cannot be used."""
        try:
            values = {name: record[name] for name in cls.__slots__}
        except KeyError as exc:
            raise SettingError(f"field {exc.args[0]} is missing") from None
        key, scope, mode = values["key"], values["scope"], values["mode"]
        if scope not in SCOPES:
            raise SettingError(f"unknown scope {scope!r}")
        if not isinstance(key, str) or not key.startswith(f"{scope}:"):
            raise SettingError(f"key does not start with its scope {scope}:")
        if mode not in MODES:
            raise SettingError(f"unknown mode {mode!r}")
        for name in (*LIMITS, "retry_interval_s", "version", "event_time"):
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(f"{name} must be a positive integer, got {value!r}")
        until = values["suspended_until"]
        if until is not None and (isinstance(until, bool) or not isinstance(until, int)):
            raise SettingError(f"suspended_until must be epoch ms or null, got {until!r}")
        if not isinstance(values["reason"], str):
            raise SettingError("reason must be a string")
        return cls(**values)

    def paused(self, now_ms: int) -> bool:
        """Suspended and not yet over at ``now_ms``."""
        return self.mode == "suspended" and (
            self.suspended_until is None or now_ms < self.suspended_until
        )


@dataclass(frozen=True, slots=True)
class Target:
    """What a key covers: its group, IP, the real domains and the patterns left out."""

    group: str
    ip: str | None
    domains: tuple[str, ...]
    patterns: tuple[str, ...]


def target_of(setting: Setting, rules: MxRules) -> Target:
    """The domains (and IP) ``setting``'s key stands for; SettingError for a bad key."""
    body = setting.key.split(":", 1)[1]
    ip = None
    if setting.scope == "domain":
        domain = body.lower().rstrip(".")
        if not _DOMAIN.fullmatch(domain):
            raise SettingError("key names no valid domain")
        return Target(rules.group_for(domain), None, (domain,), ())
    if setting.scope == "ip_group":
        ip, sep, group = body.partition("|")
        if not sep or not group:
            raise SettingError("ip_group key is not <ip>|<group>")
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise SettingError("ip_group key names no valid IP address") from None
    else:
        group = body
    if group == DEFAULT_GROUP or group not in rules.groups:
        return Target(group, ip, (), ())
    names = rules.groups[group].domains
    real = tuple(sorted(d for d in names if _DOMAIN.fullmatch(d) and not _WILDCARD.search(d)))
    return Target(group, ip, real, tuple(d for d in names if d not in real))


def capped(setting: Setting, rules: MxRules, group: str) -> dict[str, int]:
    """The setting's limits, none above the group's current maximum."""
    g = rules.group(group)
    return {name: min(getattr(setting, name), getattr(g, name).max) for name in LIMITS}


def off_baseline(setting: Setting, rules: MxRules, group: str) -> bool:
    g = rules.group(group)
    limits = capped(setting, rules, group)
    return any(limits[name] != getattr(g, name).baseline for name in LIMITS)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def json_line(setting: Setting, rules: MxRules) -> dict[str, Any]:
    """The ``--emit json`` object of one setting, for other MTAs' scripts."""
    target = target_of(setting, rules)
    return {
        "key": setting.key,
        "scope": setting.scope,
        "group": target.group,
        "ip": target.ip,
        "domains": list(target.domains),
        "patterns": list(target.patterns),
        "mode": setting.mode,
        **capped(setting, rules, target.group),
        "retry_interval_s": setting.retry_interval_s,
        "suspended_until": iso(setting.suspended_until),
        "reason": setting.reason,
        "version": setting.version,
        "event_time": iso(setting.event_time),
    }


def parse_vmta_map(text: str) -> dict[str, str]:
    """``IP=VMTA`` pairs separated by commas, whitespace or new lines (``#`` comments),
    as ``--vmta-map`` and its file give them; ValueError names a bad entry."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        for item in line.split("#", 1)[0].replace(",", " ").split():
            ip, sep, vmta = item.partition("=")
            if not sep or not _VMTA.fullmatch(vmta):
                raise ValueError(f"{item!r} is not IP=VMTA (VMTA: letters, digits, . _ -)")
            try:
                result[str(ipaddress.ip_address(ip))] = vmta
            except ValueError:
                raise ValueError(f"{ip!r} in {item!r} is not an IP address") from None
    return result


# --- queue commands --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Queue:
    domain: str
    vmta: str

    def __str__(self) -> str:
        return f"{self.domain}/{self.vmta}"


@dataclass(frozen=True, slots=True)
class QueueState:
    """What a queue is (or should be); None: unknown (never told), or left as it is."""

    paused: bool | None
    mode: str | None  # "normal" or "backoff"


@dataclass(frozen=True, slots=True)
class Command:
    queue: Queue
    action: str  # "mode", "pause" or "resume"
    mode: str | None = None

    @property
    def args(self) -> tuple[str, ...]:
        """The arguments after the ``pmta`` program name."""
        if self.action == "mode":
            return ("set", "queue", f"--mode={self.mode}", str(self.queue))
        return (self.action, "queue", str(self.queue))


def _wanted(setting: Setting, now_ms: int) -> QueueState:
    if setting.paused(now_ms):
        return QueueState(True, None)
    if setting.mode == "suspended":  # over: resume, and leave the mode to the next setting
        return QueueState(False, None)
    return QueueState(False, "backoff" if setting.mode == "backoff" else "normal")


def _stricter(a: QueueState, b: QueueState) -> QueueState:
    modes = {a.mode, b.mode} - {None}
    return QueueState(
        bool(a.paused or b.paused), "backoff" if "backoff" in modes else next(iter(modes), None)
    )


def desired_queues(
    settings: Iterable[Setting], rules: MxRules, vmtas: Mapping[str, str], now_ms: int
) -> tuple[dict[Queue, QueueState], list[str]]:
    """Every queue the settings reach and what it should be at ``now_ms``, with notes on
    keys that reach no queue (no addresses in them)."""
    desired: dict[Queue, QueueState] = {}
    notes = []
    for setting in settings:
        try:
            target = target_of(setting, rules)
        except SettingError as exc:
            notes.append(f"{setting.key}: {exc}")
            continue
        vmta = ALL_VMTAS
        if target.ip is not None:
            if target.ip not in vmtas:
                if target.domains:
                    notes.append(f"{setting.key}: no virtual MTA mapped to {target.ip}")
                continue
            vmta = vmtas[target.ip]
        if not target.domains:
            notes.append(f"{setting.key}: group {target.group} has no real domain to control")
        want = _wanted(setting, now_ms)
        for domain in target.domains:
            queue = Queue(domain, vmta)
            have = desired.get(queue)
            desired[queue] = want if have is None else _stricter(have, want)
    # A group or domain key holds every virtual MTA's queue of its domains.
    for queue, want in desired.items():
        whole = desired.get(Queue(queue.domain, ALL_VMTAS))
        if queue.vmta != ALL_VMTAS and whole is not None:
            desired[queue] = _stricter(want, whole)
    return desired, notes


def apply_effect(state: MutableMapping[Queue, QueueState], command: Command) -> None:
    """Record that ``command`` succeeded. A command on ``domain/*`` reaches every virtual
    MTA's queue of the domain, so it changes what is known of them too."""
    queues = [command.queue]
    if command.queue.vmta == ALL_VMTAS:
        queues += [q for q in state if q.domain == command.queue.domain and q != command.queue]
    for queue in queues:
        have = state.get(queue, QueueState(None, None))
        if command.action == "mode":
            state[queue] = replace(have, mode=command.mode)
        else:
            state[queue] = replace(have, paused=command.action == "pause")


def plan(applied: Mapping[Queue, QueueState], desired: Mapping[Queue, QueueState]) -> list[Command]:
    """Commands that take the queues from ``applied`` to ``desired``: per domain, the
    ``domain/*`` queue first, then each virtual MTA's (set again when the first changed
    them); per queue the mode before a resume, so that it resumes in the right mode."""
    state = dict(applied)
    commands = []
    for queue in sorted(desired, key=lambda q: (q.domain, q.vmta != ALL_VMTAS, q.vmta)):
        want, have = desired[queue], state.get(queue, QueueState(None, None))
        steps = []
        if want.mode is not None and want.mode != have.mode:
            steps.append(Command(queue, "mode", want.mode))
        if want.paused != have.paused:
            steps.append(Command(queue, "pause" if want.paused else "resume"))
        for command in steps:
            commands.append(command)
            apply_effect(state, command)
    return commands


def next_expiry(settings: Iterable[Setting], now_ms: int) -> int | None:
    """The earliest end of a suspension still under way at ``now_ms``."""
    ends = [s.suspended_until for s in settings if s.paused(now_ms) and s.suspended_until]
    return min(ends, default=None)


# --- configuration fragment ------------------------------------------------------------


@dataclass
class _Block:
    limits: dict[str, int] | None = None  # the domain's own, from group and domain keys
    by_ip: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _stricter_limits(a: dict[str, int] | None, b: dict[str, int]) -> dict[str, int]:
    return dict(b) if a is None else {name: min(a[name], b[name]) for name in LIMITS}


def _comment(text: str) -> str:
    return _CONTROL.sub(" ", text)[:200]


def render_fragment(settings: Iterable[Setting], rules: MxRules) -> str:
    """The configuration fragment: one ``<domain>`` block per domain that a key off its
    baseline reaches, in domain order, the same text for the same settings."""
    blocks: dict[str, _Block] = {}
    for setting in sorted(settings, key=lambda s: s.key):
        try:
            target = target_of(setting, rules)
        except SettingError:
            continue
        if not off_baseline(setting, rules, target.group):
            continue
        limits = capped(setting, rules, target.group)
        note = f"{setting.key} v{setting.version} {setting.mode}: {_comment(setting.reason)}"
        for domain in target.domains:
            block = blocks.setdefault(domain, _Block())
            block.notes.append(note)
            if target.ip is None:
                block.limits = _stricter_limits(block.limits, limits)
            else:
                block.by_ip[target.ip] = _stricter_limits(block.by_ip.get(target.ip), limits)
    lines = [HEADER.rstrip("\n")]
    for domain in sorted(blocks):
        lines += _render_block(domain, blocks[domain])
    return "\n".join(lines) + "\n"


def _render_block(domain: str, block: _Block) -> list[str]:
    lines = [f"<domain {domain}>"]
    lines += [f"    # {note}" for note in block.notes]
    if block.limits is not None:
        rate, conns = block.limits["max_rate_per_hour"], block.limits["max_connections"]
        lines += [
            f"    max-msg-rate {rate}/h",
            f"    backoff-max-msg-rate {rate}/h",
            f"    max-smtp-out {conns}",
            f"    backoff-max-smtp-out {conns}",
            f"    max-msg-per-connection {block.limits['max_messages_per_connection']}",
        ]
    for ip in sorted(block.by_ip, key=_ip_order):
        limits = block.by_ip[ip]
        cidr = f"{ip}/{ipaddress.ip_address(ip).max_prefixlen}"
        lines += [
            f"    source-ip-max-msg-rate {cidr} {limits['max_rate_per_hour']}/h",
            f"    source-ip-max-smtp-out {cidr} {limits['max_connections']}",
        ]
    return [*lines, "</domain>"]


def _ip_order(ip: str) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    address = ipaddress.ip_address(ip)
    return address.version, address
