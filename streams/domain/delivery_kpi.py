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

from dataclasses import dataclass, fields
from typing import Any

from streams.domain.message_status import FAILED, SENT, TAKEN_INTO_ACCOUNT, MessageView


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
        return not any(getattr(self, f.name) for f in fields(self))


def _contribution(v: MessageView | None) -> dict[str, int]:
    if v is None:
        return {f.name: 0 for f in fields(KpiDelta)}
    failed = v.status == FAILED
    return {
        "to_deliver": 1,
        "taken_into_account": int(v.status == TAKEN_INTO_ACCOUNT),
        "sent": int(v.status == SENT),
        "failed_hard": int(failed and v.failure_type == "hard"),
        "failed_soft": int(failed and v.failure_type != "hard"),
        "bounces_errors": int(v.has_error),
    }


def kpi_delta(old: MessageView | None, new: MessageView) -> KpiDelta:
    """How the delivery's counts change when one message goes from ``old`` to ``new``."""
    before, after = _contribution(old), _contribution(new)
    return KpiDelta(**{name: after[name] - before[name] for name in after})


@dataclass(frozen=True, slots=True)
class KpiCounts:
    to_deliver: int = 0
    taken_into_account: int = 0
    sent: int = 0
    failed_hard: int = 0
    failed_soft: int = 0
    bounces_errors: int = 0

    def add(self, delta: KpiDelta) -> KpiCounts:
        """New counts with one message's change applied."""
        return KpiCounts(
            **{f.name: getattr(self, f.name) + getattr(delta, f.name) for f in fields(self)}
        )

    def __add__(self, other: KpiCounts) -> KpiCounts:
        return KpiCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

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
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KpiCounts:
        return cls(**{f.name: int(d.get(f.name, 0)) for f in fields(cls)})
