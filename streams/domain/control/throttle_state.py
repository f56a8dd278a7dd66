"""What the throttle controller keeps per key (``KeyState``) and publishes
(``ThrottleSetting``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from streams.domain.control.automation import TriggerCounter

Mode = Literal["normal", "backoff", "suspended", "warmup"]
SettingScope = Literal["group", "domain", "ip_group"]


@dataclass(frozen=True, slots=True)
class ThrottleSetting:
    key: str
    scope: SettingScope
    mode: Mode
    max_rate_per_hour: int
    max_connections: int
    max_messages_per_connection: int
    retry_interval_s: int
    suspended_until: int | None  # epoch ms
    reason: str
    version: int
    changed_at: int  # epoch ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class KeyState:
    """Mutable controller state of one key; ``to_dict``/``from_dict`` for tables."""

    key: str
    scope: SettingScope
    group: str
    max_rate_per_hour: int
    max_connections: int
    max_messages_per_connection: int
    retry_interval_s: int
    suspended_until: int | None = None
    reason: str = "baseline"
    version: int = 0
    changed_at: int | None = None
    last_negative_ms: int | None = None
    hold_until_ms: int | None = None
    warmup_start_ms: int | None = None
    # Minutes with deliveries since the last published change (and the last such minute,
    # event time // 60 000): a key climbs only on evidence of sustained clean sending.
    active_minutes: int = 0
    active_minute: int | None = None
    published: list[Any] | None = None  # what was last published, to publish on change only
    # Event time up to which a stored state was ticked: a restart whose sequencer was
    # stored behind it ticks those instants again, and they must not act twice.
    as_of_ms: int | None = None
    counters: dict[str, TriggerCounter] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {f: getattr(self, f) for f in self.__slots__ if f != "counters"}
        data["counters"] = {name: c.to_dict() for name, c in self.counters.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyState:
        values = dict(data)
        counters = values.pop("counters", {})
        state = cls(**values)
        state.counters = {n: TriggerCounter.from_dict(c) for n, c in counters.items()}
        return state
