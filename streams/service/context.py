"""What every route of the HTTP service shares: settings, the Redis views, the producer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.runtime.config import Settings
from streams.serving.views import ViewStore


@dataclass
class ServiceContext:
    settings: Settings
    views: ViewStore
    # The service's producer of input events and dead letters (set by the server).
    producer: Any = None
    # Per-route state a module keeps for the service's lifetime (e.g. websocket peers).
    extras: dict[str, Any] = field(default_factory=dict)
