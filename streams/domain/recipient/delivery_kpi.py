"""Delivery KPIs (the EFS delivery table), keyed by delivery id.

Counters, each a number of messages of the delivery:

- ``to_deliver``: messages known (any MTA event seen);
- ``taken_into_account``: messages currently in that status (not yet sent/failed);
- ``sent``; ``failed_hard`` and ``failed_soft`` (``failed`` is their sum);
- ``bounces_errors``: messages with at least one bounce or error.

Derived: ``pending`` = to_deliver - sent - failed (messages not terminal; equal to
``taken_into_account`` since every tracked message has a status) and
``success_pct`` = sent / to_deliver * 100 (0 without messages).

No double counting: a message contributes 1 to the counters matching its current
view and 0 elsewhere; ``kpi_delta(old, new)`` is the change of that contribution
when the message's view changes. ``old`` must be the view last counted for that
message (stored by the caller), not one recomputed at the new clock, so that the
deltas of one message always telescope to the contribution of its latest view,
whatever the order and duplication of its events. Counts from several partitions
are summed with ``+``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from streams.domain.recipient.message_status import FAILED, SENT, TAKEN_INTO_ACCOUNT, MessageView

# Field order of both classes; arithmetic is spelled out per field because it runs for
# every event (dataclasses.fields() was a tenth of the pipeline's own time).
NAMES = ("to_deliver", "taken_into_account", "sent", "failed_hard", "failed_soft", "bounces_errors")


@dataclass(frozen=True, slots=True)
class KpiDelta:
    """The change of one message's contribution (each field is -1, 0 or +1)."""

    to_deliver: int = 0
    taken_into_account: int = 0
    sent: int = 0
    failed_hard: int = 0
    failed_soft: int = 0
    bounces_errors: int = 0

    @property
    def is_zero(self) -> bool:
        """True when the change leaves the counts as they are (nothing to publish)."""
        return not (
            self.to_deliver
            or self.taken_into_account
            or self.sent
            or self.failed_hard
            or self.failed_soft
            or self.bounces_errors
        )


_NOTHING = (0, 0, 0, 0, 0, 0)


def _contribution(v: MessageView | None) -> tuple[int, ...]:
    """The message's 0/1 per counter, in NAMES order."""
    if v is None:
        return _NOTHING
    failed = v.status == FAILED
    return (
        1,
        int(v.status == TAKEN_INTO_ACCOUNT),
        int(v.status == SENT),
        int(failed and v.failure_type == "hard"),
        int(failed and v.failure_type != "hard"),
        int(v.has_error),
    )


def kpi_delta(old: MessageView | None, new: MessageView) -> KpiDelta:
    """How the delivery's counts change when one message goes from ``old`` to ``new``."""
    return _delta(_contribution(old), _contribution(new))


# A few dozen pairs of contributions exist, so each delta is built once and shared.
@functools.cache
def _delta(b: tuple[int, ...], a: tuple[int, ...]) -> KpiDelta:
    return KpiDelta(a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3], a[4] - b[4], a[5] - b[5])


@dataclass(frozen=True, slots=True)
class KpiCounts:
    to_deliver: int = 0
    taken_into_account: int = 0
    sent: int = 0
    failed_hard: int = 0
    failed_soft: int = 0
    bounces_errors: int = 0

    def add(self, delta: KpiDelta | KpiCounts) -> KpiCounts:
        """New counts with one message's change (or other counts) added."""
        return KpiCounts(
            self.to_deliver + delta.to_deliver,
            self.taken_into_account + delta.taken_into_account,
            self.sent + delta.sent,
            self.failed_hard + delta.failed_hard,
            self.failed_soft + delta.failed_soft,
            self.bounces_errors + delta.bounces_errors,
        )

    __add__ = add

    @property
    def failed(self) -> int:
        return self.failed_hard + self.failed_soft

    @property
    def pending(self) -> int:
        return self.to_deliver - self.sent - self.failed

    @property
    def success_pct(self) -> float:
        return self.sent / self.to_deliver * 100 if self.to_deliver else 0.0

    def to_dict(self) -> dict[str, int]:
        return {
            "to_deliver": self.to_deliver,
            "taken_into_account": self.taken_into_account,
            "sent": self.sent,
            "failed_hard": self.failed_hard,
            "failed_soft": self.failed_soft,
            "bounces_errors": self.bounces_errors,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KpiCounts:
        get = d.get
        return cls(
            int(get("to_deliver", 0)),
            int(get("taken_into_account", 0)),
            int(get("sent", 0)),
            int(get("failed_hard", 0)),
            int(get("failed_soft", 0)),
            int(get("bounces_errors", 0)),
        )
