"""The bounce rules file: its format, checks and compiled form.

``rules.toml`` next to this module holds the shipped rules (the format is described in its
header); an operator file in the same format may add rules, replace a shipped rule by
reusing its ``id`` or drop one with ``enabled = false``. ``load_rules`` reads and compiles
both; a malformed file raises ``RulesError`` naming the file, the rule id and the problem.
Also here: reading a reply's code and enhanced status out of its text (``parse_reply``).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.domain.bounce.literals import compile_alternatives
from streams.domain.types import FailureType, Qualification

SHIPPED_RULES = Path(__file__).with_name("rules.toml")
# Replies longer than this hold nothing more to learn and would only slow the regexes.
MAX_TEXT = 2000
MAX_PROVIDER = 255

Status = tuple[int, int, int]

_CLASS_TYPES = frozenset({"hard", "soft", "ignored", "undefined"})
_RULE_TYPES = frozenset({"hard", "soft", "ignored"})
_RULE_KEYS = frozenset(
    {
        "id",
        "reply_code",
        "enhanced_status",
        "text",
        "provider",
        "bounce_class",
        "failure_type",
        "failure_reason",
        "rate_limit",
        "enabled",
    }
)
_CLASS_KEYS = frozenset({"name", "failure_type", "failure_reason", "doc"})

_CODE_PATTERN = re.compile(r"(?:[0-9x]|\[[0-9\-]+\]){3}")
_STATUS_PATTERN = re.compile(r"(x|[245])\.(\*|\d{1,3})\.(\*|\d{1,3})")

# A reply code stands alone (not inside an IP, a time or an id); an enhanced status is
# not followed by a fourth number (Yahoo's "4.16.55.1" is not a status).
_CODE_RE = re.compile(r"(?<![\w.])([245]\d\d)(?![\w.])")
_STATUS_RE = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\w|\.\d)")
_PAIR_RE = re.compile(
    r"""(?<![\w.])([245]\d\d)[ :\-]+['"#]?([245])\.(\d{1,3})\.(\d{1,3})(?!\w|\.\d)"""
)


class RulesError(ValueError):
    """A rules file cannot be used; the message names the file, rule and problem."""


def parse_reply(text: str) -> tuple[int | None, Status | None]:
    """Reply code and enhanced status found in a reply text.

    The code directly before a status wins ("host x said: 452 4.2.2 ..."); otherwise
    the first code and the first status, each may be None.
    """
    pair = _PAIR_RE.search(text)
    if pair:
        return int(pair[1]), (int(pair[2]), int(pair[3]), int(pair[4]))
    code = _CODE_RE.search(text)
    status = _STATUS_RE.search(text)
    return (
        int(code[1]) if code else None,
        (int(status[1]), int(status[2]), int(status[3])) if status else None,
    )


def coerce_code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 100 <= value <= 599 else None
    if isinstance(value, str) and len(value) == 3 and value.isdigit():
        return coerce_code(int(value))
    return None


def coerce_status(value: object) -> Status | None:
    if not isinstance(value, str) or len(value) > 32:
        return None
    found = _STATUS_RE.search(value.strip())
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def normalise_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: MAX_TEXT * 4]).decode("utf-8", errors="replace")
    elif not isinstance(value, str):
        value = str(value)
    return " ".join(value[:MAX_TEXT].split())


# --------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClassInfo:
    """A Momentum/SparkPost bounce class and its default Campaign outcome."""

    number: int
    name: str
    failure_type: FailureType
    failure_reason: str
    doc: str


@dataclass(frozen=True, slots=True)
class StatusPattern:
    """One enhanced status pattern; None components are wildcards (a None class
    means a failure class, 4 or 5, never 2 = success)."""

    cls: int | None
    subject: int | None
    detail: int | None

    def matches(self, status: Status) -> bool:
        return (
            (self.cls == status[0] if self.cls is not None else status[0] != 2)
            and (self.subject is None or self.subject == status[1])
            and (self.detail is None or self.detail == status[2])
        )

    @property
    def tier(self) -> int:
        if self.subject is None:
            return 5
        return 4 if self.detail is None else 3


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule; ``order`` sorts rules into precedence order."""

    id: str
    tier: int
    order: int
    codes: frozenset[int] | None
    code_none: bool
    statuses: tuple[StatusPattern, ...] | None
    status_none: bool
    text: re.Pattern[str] | None
    # The text regex split at its top-level "|": (regex, literals one of which a match
    # must contain or None when it has to run on every text, True when the literal
    # is the whole alternative).
    alternatives: tuple[tuple[re.Pattern[str], tuple[str, ...] | None, bool], ...]
    unconditional: bool
    provider: re.Pattern[str] | None
    outcome: Qualification
    transient_outcome: Qualification

    def conditions_hold(self, code: int | None, status: Status | None, provider: str) -> bool:
        if self.codes is not None:
            if code is None:
                if not self.code_none:
                    return False
            elif code not in self.codes:
                return False
        if self.statuses is not None:
            if status is None:
                if not self.status_none:
                    return False
            elif not any(p.matches(status) for p in self.statuses):
                return False
        return self.provider is None or (bool(provider) and bool(self.provider.search(provider)))


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else [value]


def _compile_codes(values: list[object], where: str) -> tuple[frozenset[int], bool]:
    codes: set[int] = set()
    allow_none = False
    for value in values:
        if value == "none":
            allow_none = True
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _CODE_PATTERN.fullmatch(value.lower()):
            raise RulesError(f"{where}: bad reply_code pattern {value!r}")
        regex = re.compile(value.lower().replace("x", r"\d"))
        codes.update(n for n in range(100, 600) if regex.fullmatch(str(n)))
    return frozenset(codes), allow_none


def _compile_statuses(values: list[object], where: str) -> tuple[tuple[StatusPattern, ...], bool]:
    patterns = []
    allow_none = False
    for value in values:
        if value == "none":
            allow_none = True
            continue
        found = _STATUS_PATTERN.fullmatch(value.lower()) if isinstance(value, str) else None
        if not found or (found[2] == "*" and found[3] != "*"):
            raise RulesError(f"{where}: bad enhanced_status pattern {value!r}")
        patterns.append(
            StatusPattern(
                None if found[1] == "x" else int(found[1]),
                None if found[2] == "*" else int(found[2]),
                None if found[3] == "*" else int(found[3]),
            )
        )
    return tuple(patterns), allow_none


def _compile_regex(value: object, field: str, where: str) -> re.Pattern[str]:
    if not isinstance(value, str) or not value:
        raise RulesError(f"{where}: {field} must be a non-empty string")
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise RulesError(f"{where}: bad {field} regex: {exc}") from exc


def _compile_rule(
    raw: dict[str, Any], order: int, classes: dict[int, ClassInfo], where: str
) -> Rule:
    rule_id = raw["id"]
    where = f"{where}: rule {rule_id!r}"
    codes = code_none = statuses = status_none = None
    if "reply_code" in raw:
        codes, code_none = _compile_codes(_as_list(raw["reply_code"]), where)
    if "enhanced_status" in raw:
        statuses, status_none = _compile_statuses(_as_list(raw["enhanced_status"]), where)
    text = _compile_regex(raw["text"], "text", where) if "text" in raw else None
    provider = _compile_regex(raw["provider"], "provider", where) if "provider" in raw else None
    if text is None and codes is None and statuses is None:
        raise RulesError(f"{where}: needs at least one of text, reply_code, enhanced_status")

    number = raw.get("bounce_class")
    if isinstance(number, bool) or not isinstance(number, int) or number not in classes:
        raise RulesError(f"{where}: bounce_class {number!r} is not in [classes]")
    info = classes[number]
    failure_type = raw.get("failure_type", info.failure_type)
    if failure_type not in _RULE_TYPES:
        raise RulesError(f"{where}: failure_type {failure_type!r} is not hard, soft or ignored")
    reason = raw.get("failure_reason", info.failure_reason)
    if not isinstance(reason, str) or not reason:
        raise RulesError(f"{where}: failure_reason must be a non-empty string")
    rate_limit = raw.get("rate_limit", False)
    if not isinstance(rate_limit, bool):
        raise RulesError(f"{where}: rate_limit must be true or false")

    if text is not None:
        tier = 0 if provider is not None else 1
    elif provider is not None:
        tier = 2
    elif statuses:
        tier = max(p.tier for p in statuses)
    else:
        tier = 6
    outcome = Qualification(failure_type, reason, number, rule_id, rate_limit)
    transient = outcome
    if failure_type == "hard":
        transient = Qualification("soft", reason, number, rule_id, rate_limit)
    alternatives = compile_alternatives(raw["text"]) if text is not None else ()
    return Rule(
        id=rule_id,
        tier=tier,
        order=order,
        codes=codes,
        code_none=bool(code_none),
        statuses=statuses,
        status_none=bool(status_none),
        text=text,
        alternatives=alternatives,
        unconditional=codes is None and statuses is None and provider is None,
        provider=provider,
        outcome=outcome,
        transient_outcome=transient,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rules file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: invalid TOML: {exc}") from exc


def _merge_classes(doc: dict[str, Any], classes: dict[int, ClassInfo], path: Path) -> None:
    table = doc.get("classes", {})
    if not isinstance(table, dict):
        raise RulesError(f"{path}: [classes] must be a table")
    for key, raw in table.items():
        where = f"{path}: class {key!r}"
        if not key.isdigit() or not isinstance(raw, dict):
            raise RulesError(f"{where}: classes are tables keyed by their number")
        unknown = set(raw) - _CLASS_KEYS
        if unknown:
            raise RulesError(f"{where}: unknown keys {sorted(unknown)}")
        number = int(key)
        old = classes.get(number)
        merged = {
            "name": old.name if old else None,
            "failure_type": old.failure_type if old else None,
            "failure_reason": old.failure_reason if old else None,
            "doc": old.doc if old else "",
        } | raw
        if merged["failure_type"] not in _CLASS_TYPES:
            raise RulesError(f"{where}: failure_type {merged['failure_type']!r} is not valid")
        for field in ("name", "failure_reason", "doc"):
            if not isinstance(merged[field], str) or (field != "doc" and not merged[field]):
                raise RulesError(f"{where}: {field} must be a non-empty string")
        classes[number] = ClassInfo(
            number, merged["name"], merged["failure_type"], merged["failure_reason"], merged["doc"]
        )


def _raw_rules(doc: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    rules = doc.get("rules", [])
    if not isinstance(rules, list):
        raise RulesError(f"{path}: 'rules' must be an array of tables ([[rules]])")
    unknown_top = set(doc) - {"classes", "rules"}
    if unknown_top:
        raise RulesError(f"{path}: unknown top-level keys {sorted(unknown_top)}")
    seen: set[str] = set()
    for n, raw in enumerate(rules, 1):
        if not isinstance(raw, dict):
            raise RulesError(f"{path}: rule #{n} is not a table")
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not rule_id:
            raise RulesError(f"{path}: rule #{n} has no id")
        if rule_id in seen:
            raise RulesError(f"{path}: rule {rule_id!r}: duplicate id")
        seen.add(rule_id)
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise RulesError(f"{path}: rule {rule_id!r}: unknown keys {sorted(unknown)}")
        if not isinstance(raw.get("enabled", True), bool):
            raise RulesError(f"{path}: rule {rule_id!r}: enabled must be true or false")
    return rules


def load_rules(operator_file: str | Path | None = None) -> tuple[list[Rule], dict[int, ClassInfo]]:
    """Shipped rules merged with the operator file, compiled, in precedence order."""
    classes: dict[int, ClassInfo] = {}
    shipped_doc = _read_toml(SHIPPED_RULES)
    _merge_classes(shipped_doc, classes, SHIPPED_RULES)
    # (order, raw rule, file it came from); operator additions get negative orders so
    # they come first inside their tier.
    entries: dict[str, tuple[int, dict[str, Any], Path]] = {
        raw["id"]: (n, raw, SHIPPED_RULES)
        for n, raw in enumerate(_raw_rules(shipped_doc, SHIPPED_RULES))
    }
    if operator_file is not None:
        path = Path(operator_file)
        doc = _read_toml(path)
        _merge_classes(doc, classes, path)
        operator_rules = _raw_rules(doc, path)
        for n, raw in enumerate(operator_rules):
            if raw.get("enabled", True) is False:
                entries.pop(raw["id"], None)
                continue
            order = entries[raw["id"]][0] if raw["id"] in entries else n - len(operator_rules)
            entries[raw["id"]] = (order, raw, path)
    rules = [
        _compile_rule(raw, order, classes, str(path))
        for order, raw, path in entries.values()
        if raw.get("enabled", True)
    ]
    rules.sort(key=lambda r: (r.tier, r.order))
    return rules, classes
