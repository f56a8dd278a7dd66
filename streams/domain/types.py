"""Value types shared by the domain modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FailureType = Literal["hard", "soft", "ignored", "undefined"]


@dataclass(frozen=True, slots=True)
class Qualification:
    """What the bounce rules decided about one reply: the EFS failure type and reason,
    the Momentum bounce class, and the id of the rule that decided (for operators).

    ``rate_limit`` marks replies in which the provider says the sender goes too fast
    (421 4.7.28, Yahoo [TSS04], Microsoft 4.7.650, too many connections ...): the
    throttle controller reacts to these differently from blocks and bad addresses.
    """

    failure_type: FailureType
    failure_reason: str
    bounce_class: int
    rule: str
    rate_limit: bool = False
