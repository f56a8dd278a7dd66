"""Hostile records found by tests/e2e/test_fuzz.py, pinned as unit tests."""

from __future__ import annotations

import pytest
from factories import JAN_2026, event

from streams.runtime.codec import Codec, DecodeError
from streams.runtime.validate import validate_event


def _send(recipient: str) -> dict:
    return event("M1", "relayed", event_id="E1", recipient=recipient)


@pytest.mark.parametrize(
    "recipient",
    [
        "user\u202e@example.org",  # right-to-left override
        "user\u200b@example.org",  # zero-width space
        "user@exa\ufeffmple.org",  # byte-order mark
        "user@example\u2028.org",  # line separator
        "user\u00a0x@example.org",  # no-break space
        "user\ue000@example.org",  # private use
    ],
)
def test_invisible_unicode_in_the_recipient_is_rejected(recipient: str) -> None:
    with pytest.raises(DecodeError, match=r"invisible Unicode|white space") as info:
        validate_event("send", _send(recipient), now_ms=JAN_2026)
    assert info.value.kind == "invalid"


@pytest.mark.parametrize(
    "recipient", ["josé.álvarez@exämple.org", "用户@例え.jp", "user@🎉.example", "a+b@c.io"]
)
def test_international_addresses_stay_valid(recipient: str) -> None:
    validate_event("send", _send(recipient), now_ms=JAN_2026)


def test_a_non_utf8_string_field_does_not_echo_its_bytes_in_the_reason() -> None:
    codec = Codec()
    marker = "secret.person@example.org"
    good = codec.encode("send", _send(marker))
    raw = marker.encode()
    # Append a lone surrogate (UTF-8 encoded) to the recipient and fix its length prefix.
    bad = "\udcff".encode("utf-8", "surrogatepass")
    value = good.replace(bytes([len(raw) * 2]) + raw, bytes([(len(raw) + 3) * 2]) + raw + bad)
    with pytest.raises(DecodeError) as info:
        codec.decode("send", value)
    assert info.value.kind == "invalid"
    assert "UnicodeDecodeError" in info.value.reason
    assert "secret.person" not in info.value.reason
