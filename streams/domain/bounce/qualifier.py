"""Bounce qualifier: SMTP reply (code, enhanced status, text, provider) -> Qualification.

The rules come from ``rules.toml`` and an optional operator file (``streams.domain.bounce
.rules``), read and compiled once, when a :class:`Qualifier` is built.

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
from pathlib import Path

from streams.domain.bounce.literals import automaton
from streams.domain.bounce.rules import (
    MAX_PROVIDER,
    Rule,
    Status,
    coerce_code,
    coerce_status,
    load_rules,
    normalise_text,
    parse_reply,
)
from streams.domain.types import Qualification

log = logging.getLogger(__name__)

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
        self._prefilter = automaton(owners) if owners else None
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
            code = coerce_code(smtp_code)
            status = coerce_status(enhanced_status)
            text = normalise_text(diagnostic)
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
