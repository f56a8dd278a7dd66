"""The literal prefilter of the bounce rules: which plain strings a reply must contain for
a rule's regex to have a chance, found once per rule so that a reply is matched against
an Aho-Corasick automaton of them first and only the rules it names run their regexes.

``required_literals`` reads a regex conservatively: it returns None (no prefilter, the
regex always runs) whenever it cannot prove a set of literals of which one must appear.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import ahocorasick


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


def automaton(literals: Iterable[str]) -> ahocorasick.Automaton:
    """Aho-Corasick over the rules' required literals: one pass over the text finds every
    occurrence, overlapping ones included (a regex alternation of the same literals cost
    a third of each qualification)."""
    automaton = ahocorasick.Automaton()
    for lit in literals:
        automaton.add_word(lit, lit)
    automaton.make_automaton()
    return automaton


def compile_alternatives(
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
