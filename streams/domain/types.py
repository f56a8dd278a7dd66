"""Value types shared by the domain modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FailureType = Literal["hard", "soft", "ignored", "undefined"]


@dataclass(frozen=True, slots=True)
class Qualification:
    """What the bounce rules decided about one reply: the EFS failure type and reason,
    the Momentum bounce class, and the id of the rule that decided (for operators)."""

    failure_type: FailureType
    failure_reason: str
    bounce_class: int
    rule: str
