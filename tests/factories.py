"""Plain values and builders shared by the tests: named start times and one event builder.

Imported as ``from factories import ...`` (pytest puts tests/ on ``sys.path`` for
tests/conftest.py). Settings with a unique topic prefix come from the ``make_settings``
fixture of tests/conftest.py, the one place that makes a prefix.
"""

from __future__ import annotations

from typing import Any

# Start times in epoch milliseconds, named for what the tests need of them.

JAN_2026 = 1_767_225_600_000
"""2026-01-01T00:00:00Z, a midnight: the calendar start of event streams that go through
the pipeline, the validator, the simulator and the workers (unit and end-to-end tests)."""

UNALIGNED_2023 = 1_700_000_000_000
"""2023-11-14T22:13:20Z: the clock of the domain state machines and controllers (message
status, address health, KPIs, reputation, throttling), which take the time as an argument.
It lies on no minute, hour, day or 5-minute reputation bucket boundary (the reputation tests
align it to a bucket themselves)."""


def event(
    message_id: str, kind: str, t: int = 0, /, *, start: int = JAN_2026, **extra: Any
) -> dict[str, Any]:
    """An event of any family (send, bounce or retry: the family is the topic it goes to),
    at ``start + t`` ms, for delivery ``D1`` and recipient ``<message id lowercased>@example.org``,
    with the event id ``<message id>-<kind>-<t>``. ``extra`` adds fields or replaces any of
    these (``event_id``, ``delivery_id``, ``recipient``, even ``message_id``), in place.
    """
    return {
        "event_id": f"{message_id}-{kind}-{t}",
        "event_time": start + t,
        "delivery_id": "D1",
        "message_id": message_id,
        "recipient": f"{message_id.lower()}@example.org",
        "kind": kind,
        **extra,
    }
