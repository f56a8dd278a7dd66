"""Bounce qualifier: SMTP reply (code, enhanced status, text, provider) -> Qualification.

The rules live in ``bounce_rules.toml`` next to this module (the format is described in
its header); an operator file in the same format may add rules, replace a shipped rule by
reusing its ``id`` or drop one with ``enabled = false``. Both files are read and compiled
once, when a :class:`Qualifier` is built; a malformed file raises :class:`RulesError`
naming the file, the rule id and the problem.

Precedence, most specific evidence first. The tier of a rule follows from the conditions
it states:

0. provider + text        provider-specific wording
1. text                   wording (may also require a code or status)
2. provider, no text      a provider's habit for a bare code/status
3. exact enhanced status  x.y.z (5.1.1, 4.7.28)
4. status subject         x.y.* (RFC 3463 subjects x.1 ... x.7)
5. status class digit     4.*.*, 5.*.* (usually with a reply code condition)
6. bare reply code        550, 4xx ...

Inside a tier, operator rules come first, then file order. After a match, a transient
reply (4xx code, or 4.x.x status without a code) never yields ``hard``: the MTA retries
it, and a hard verdict would quarantine an address on a temporary answer. ``undefined``
is returned only when no rule matched.

Speed: text rules are not all run. Every rule regex yields, where it can, a literal that
any match must contain; one trie-shaped regex finds which literals occur in the
lower-cased text, and only the rules owning them (plus the few without a literal) run
their own regex, in precedence order. Code/status rules are bucketed by status class and
subject. An optional LRU cache keyed on (code, status, normalised text, provider) sits on
top; ``cache_size=0`` turns it off.
"""

from __future__ import annotations

import functools
import logging
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ahocorasick

from streams.domain.types import FailureType, Qualification

log = logging.getLogger(__name__)

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


def _coerce_code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 100 <= value <= 599 else None
    if isinstance(value, str) and len(value) == 3 and value.isdigit():
        return _coerce_code(int(value))
    return None


def _coerce_status(value: object) -> Status | None:
    if not isinstance(value, str) or len(value) > 32:
        return None
    found = _STATUS_RE.search(value.strip())
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def _normalise(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: MAX_TEXT * 4]).decode("utf-8", errors="replace")
    elif not isinstance(value, str):
        value = str(value)
    return " ".join(value[:MAX_TEXT].split())


# --------------------------------------------------------------------------------------
# Literal prefilter
# --------------------------------------------------------------------------------------


def _split_top_level(pattern: str) -> list[str]:
    parts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "^":
                i += 1
            if pattern[i + 1 : i + 2] == "]":
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


def _skip_group(alt: str, i: int) -> int:
    """Index after the group opening at ``alt[i]``."""
    depth, in_class = 0, False
    while i < len(alt):
        c = alt[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def _skip_class(alt: str, i: int) -> int:
    i += 1
    if alt[i : i + 1] == "^":
        i += 1
    if alt[i : i + 1] == "]":
        i += 1
    while i < len(alt) and alt[i] != "]":
        i += 2 if alt[i] == "\\" else 1
    return i + 1


def _quantifier(alt: str, i: int) -> tuple[int, int]:
    """(minimum repeat, index after the quantifier) for a quantifier at ``alt[i]``."""
    if i >= len(alt):
        return 1, i
    c = alt[i]
    if c in "?*+":
        end = i + 2 if alt[i + 1 : i + 2] in ("?", "+") else i + 1
        return (1 if c == "+" else 0), end
    if c == "{":
        close = alt.find("}", i)
        body = alt[i + 1 : close] if close > 0 else ""
        low = body.split(",")[0]
        if close > 0 and low.isdigit():
            end = close + 2 if alt[close + 1 : close + 2] == "?" else close + 1
            return int(low), end
    return 1, i


def _group_body(group: str) -> str | None:
    """Body of a group that must match as written, or None (lookaround, flags)."""
    if group.startswith("(?:"):
        return group[3:-1]
    if group.startswith("(?P<"):
        return group[group.index(">") + 1 : -1]
    if group.startswith("(?"):
        return None
    return group[1:-1]


def _requirement(alt: str) -> tuple[str, ...]:
    """Literals (lower-case ASCII) one of which any match of ``alt`` must contain: the
    longest plain run, or a mandatory group whose alternatives all have one."""
    options: list[tuple[str, ...]] = []
    cur: list[str] = []
    i = 0

    def cut() -> None:
        if cur:
            options.append(("".join(cur),))
            cur.clear()

    while i < len(alt):
        c = alt[i]
        literal: str | None = None
        group: str | None = None
        if c == "\\":
            nxt = alt[i + 1 : i + 2]
            i += 2
            if nxt and not nxt.isalnum():
                literal = nxt
        elif c == "[":
            i = _skip_class(alt, i)
        elif c == "(":
            end = _skip_group(alt, i)
            group = alt[i:end]
            i = end
        elif c in ".^$*+?{}|)":
            i += 1
        else:
            literal = c
            i += 1
        low, after = _quantifier(alt, i)
        quantified = after != i
        i = after
        if group is not None and low > 0:
            body = _group_body(group)
            inner = required_literals(body) if body is not None else None
            if inner:
                options.append(tuple(inner))
        if literal is None or not literal.isascii() or low == 0:
            cut()
            continue
        cur.append(literal.lower())
        if quantified:
            cut()
    cut()
    # The best requirement is the one whose shortest literal is longest.
    return max(options, key=lambda lits: (min(map(len, lits)), -len(lits)), default=())


def required_literals(pattern: str) -> list[str] | None:
    """Literals one of which any match of ``pattern`` must contain, or None when some
    top-level alternative has no usable literal (the rule then always runs)."""
    if re.search(r"\(\?[a-zA-Z]*x", pattern):
        return None
    literals: list[str] = []
    for alt in _split_top_level(pattern):
        lits = _requirement(alt)
        if not lits or min(map(len, lits)) < 3:
            return None
        literals.extend(lits)
    return literals


def _automaton(literals: Iterable[str]) -> ahocorasick.Automaton:
    """Aho-Corasick over the rules' required literals: one pass over the text finds every
    occurrence, overlapping ones included (a regex alternation of the same literals cost
    a third of each qualification)."""
    automaton = ahocorasick.Automaton()
    for lit in literals:
        automaton.add_word(lit, lit)
    automaton.make_automaton()
    return automaton


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
    alternatives = _alternatives(raw["text"]) if text is not None else ()
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


def _alternatives(
    pattern: str,
) -> tuple[tuple[re.Pattern[str], tuple[str, ...] | None, bool], ...]:
    parts = _split_top_level(pattern)
    try:
        compiled = [re.compile(part, re.IGNORECASE) for part in parts]
    except re.error:  # e.g. a back-reference across "|": keep the pattern whole
        return ((re.compile(pattern, re.IGNORECASE), None, False),)
    out = []
    for part, regex in zip(parts, compiled, strict=True):
        lits = required_literals(part)
        out.append((regex, tuple(lits) if lits is not None else None, _plain_literal(part)))
    return tuple(out)


def _plain_literal(part: str) -> bool:
    """True when ``part`` matches exactly one ASCII string: finding its literal in the
    text is then the match, and the regex need not run."""
    i = 0
    while i < len(part):
        c = part[i]
        if c == "\\":
            if not part[i + 1 : i + 2] or part[i + 1].isalnum():
                return False
            i += 2
        elif c in ".^$*+?{}[]()|" or not c.isascii():
            return False
        else:
            i += 1
    return bool(part)


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


_UNDEFINED = Qualification("undefined", "Not defined", 1, "unmatched")
_FAILED = Qualification("undefined", "Not defined", 1, "internal-error")


class Qualifier:
    """Compiled rules; :meth:`qualify` is pure, thread-safe and never raises."""

    def __init__(self, operator_file: str | Path | None = None, *, cache_size: int = 8192) -> None:
        self.rules, self.classes = load_rules(operator_file)
        # One entry per top-level alternative of each text rule, in precedence order.
        self._entries = [
            (rule, regex if not plain else None, lits)
            for rule in self.rules
            if rule.text is not None
            for regex, lits, plain in rule.alternatives
        ]
        self._always = [i for i, (_, _, lits) in enumerate(self._entries) if lits is None]
        owners: dict[str, set[int]] = {}
        for i, (_, _, lits) in enumerate(self._entries):
            for lit in lits or ():
                owners.setdefault(lit, set()).add(i)
        # A found literal stands for itself and every literal that is a prefix of it.
        self._owners = {
            lit: frozenset().union(
                *(owners[lit[:n]] for n in range(1, len(lit) + 1) if lit[:n] in owners)
            )
            for lit in owners
        }
        self._prefilter = _automaton(owners) if owners else None
        self._code_rules = [r for r in self.rules if r.text is None]
        self._buckets: dict[tuple[int, int] | None, list[Rule]] = {}
        self._decide = (
            functools.lru_cache(maxsize=cache_size)(self._decide_uncached)
            if cache_size
            else self._decide_uncached
        )

    def qualify(
        self,
        smtp_code: int | None,
        enhanced_status: str | None,
        diagnostic: str | None,
        provider: str | None = None,
    ) -> Qualification:
        """Qualify one reply. Codes missing from the arguments (or a generic x.0.0 status)
        are taken from the diagnostic text when it holds them."""
        try:
            code = _coerce_code(smtp_code)
            status = _coerce_status(enhanced_status)
            text = _normalise(diagnostic)
            if text and (code is None or status is None or status[1] == 0):
                text_code, text_status = parse_reply(text)
                if code is None:
                    code = text_code
                if text_status is not None and (
                    status is None or (status[0] == text_status[0] and text_status[1] != 0)
                ):
                    status = text_status
            hint = provider[:MAX_PROVIDER].lower() if isinstance(provider, str) else ""
            return self._decide(code, status, text, hint)
        except Exception:  # a stream worker must survive any reply; the bug is logged
            log.exception("bounce qualification failed")
            return _FAILED

    def qualify_text(self, reply: str) -> Qualification:
        """Qualify a bare reply text such as ``550-5.1.1 The email account ...``."""
        return self.qualify(None, None, reply)

    def _decide_uncached(
        self, code: int | None, status: Status | None, text: str, provider: str
    ) -> Qualification:
        rule = self._match_text(code, status, text, provider) if text else None
        if rule is None:
            for candidate in self._bucket(status):
                if candidate.conditions_hold(code, status, provider):
                    rule = candidate
                    break
        if rule is None:
            return _UNDEFINED
        transient = (code is not None and 400 <= code < 500) or (
            code is None and status is not None and status[0] == 4
        )
        return rule.transient_outcome if transient else rule.outcome

    def _match_text(
        self, code: int | None, status: Status | None, text: str, provider: str
    ) -> Rule | None:
        candidates: set[int] = set(self._always)
        if self._prefilter is not None:
            owners = self._owners
            for _end, lit in self._prefilter.iter(text.lower()):
                candidates.update(owners[lit])
        entries = self._entries
        for i in sorted(candidates):
            rule, regex, _ = entries[i]
            if not rule.unconditional and not rule.conditions_hold(code, status, provider):
                continue
            # A plain-literal alternative (regex None) matched when its literal was found.
            if regex is None or regex.search(text):
                return rule
        return None

    def _bucket(self, status: Status | None) -> list[Rule]:
        # Rules that can match any status of this class and subject; the key space is
        # bounded (3 classes x 1,000 subjects), so this is an index, not an input cache.
        key = None if status is None else (status[0], status[1])
        bucket = self._buckets.get(key)
        if bucket is None:
            probe = None if status is None else (status[0], status[1], -1)
            bucket = [r for r in self._code_rules if _may_match(r, probe)]
            self._buckets[key] = bucket
        return bucket


def _may_match(rule: Rule, probe: tuple[int, int, int] | None) -> bool:
    if rule.statuses is None:
        return True
    if probe is None:
        return rule.status_none
    return any(
        (p.cls == probe[0] if p.cls is not None else probe[0] != 2)
        and (p.subject is None or p.subject == probe[1])
        for p in rule.statuses
    )


def load_qualifier(operator_file: str | Path | None) -> Qualifier:
    """A Qualifier with the shipped rules plus the operator file (RulesError if bad)."""
    return Qualifier(operator_file)


@functools.cache
def default_qualifier() -> Qualifier:
    """The shipped rules, compiled once per process."""
    return Qualifier()
