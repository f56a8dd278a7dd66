"""Identifiers from input cannot reach another key's namespace in Redis.

A key is ``<prefix>:<kind>:<key_part(identifier)>``: if ``key_part`` ever let ':' through, an
address like ``x:addr:victim`` under kind ``msg`` would collide with or glob into the address
namespace; '*', '?', '[' would widen a SCAN pattern; '{}' would pick a Cluster hash slot.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.serving.views import LISTED_STATES, ViewStore, index_member, key_part

HOSTILE = [
    "a:b",
    "mta:addr:victim@example.org",
    "*",
    "user*@example.org",
    "?",
    "[a-z]",
    "%3A",
    "100%",
    "line\nbreak",
    "cr\rlf",
    "{slot}",
    "tab\there",
    "nul\x00byte",
    "space here",
    "back\\slash",
    "quote\"'",
    "..",
    "/etc/passwd",
    "\u202eevil",  # right-to-left override
    "zero\u200bwidth",
    "émoji🎉@例え.jp",
    "",
]

# '~' is RFC 3986 unreserved, kept by quote(); it means nothing to Redis keys or SCAN globs.
SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@._+-~%")
# Lone surrogates are left out: the Avro decoder reads strings as strict UTF-8, so they never
# get this far (tests/e2e/test_fuzz.py sends them and sees them dead-lettered).
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))


class _NoClient:
    def register_script(self, _script: str) -> None:
        return None


def _store(prefix: str = "mta") -> ViewStore:
    return ViewStore(_NoClient(), prefix)  # type: ignore[arg-type]


@pytest.mark.parametrize("identifier", HOSTILE)
def test_hostile_identifier_stays_in_its_namespace(identifier: str) -> None:
    key = _store().key("msg", identifier)
    prefix, kind, part = key.split(":")  # exactly two separators: ours
    assert (prefix, kind) == ("mta", "msg")
    assert set(part) <= SAFE
    assert unquote(part) == identifier


@given(TEXT)
def test_key_part_is_injective_and_free_of_separators(identifier: str) -> None:
    part = key_part(identifier)
    assert set(part) <= SAFE
    # Percent-encoding is reversible: two identifiers never share a key.
    assert unquote(part) == identifier


@given(TEXT, TEXT)
def test_distinct_identifiers_never_share_a_key(a: str, b: str) -> None:
    store = _store()
    if a != b:
        assert store.key("addr", a) != store.key("addr", b)


def test_an_identifier_cannot_forge_another_kind() -> None:
    store = _store()
    forged = store.key("msg", "x:addr:victim@example.org")
    assert forged != store.key("addr", "victim@example.org")
    assert not forged.startswith("mta:addr:")
    assert forged.count(":") == 2


def test_scan_patterns_are_not_widened_by_identifiers() -> None:
    part = key_part("*?[]{}")
    assert not set(part) & set("*?[]{}\\")


@given(st.sampled_from(["msg", "addr", "kpi", "throttle", "reputation"]), TEXT)
def test_no_view_key_is_a_sorted_index(kind: str, identifier: str) -> None:
    store = _store()
    indexes = {store.index_key(state) for state in LISTED_STATES}
    assert indexes == {"mta:index:quarantined", "mta:index:denylisted"}
    assert store.key(kind, identifier) not in indexes


@given(st.text(alphabet="ab@.", max_size=12))
def test_an_index_member_starts_with_the_domain_after_the_last_at(address: str) -> None:
    domain, space, rest = index_member(address).partition(" ")
    assert space and rest == address
    assert domain == (address.rpartition("@")[2] if "@" in address else "")
