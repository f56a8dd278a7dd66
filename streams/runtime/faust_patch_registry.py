"""The registry of the faust-streaming and aiokafka patches: which upstream function each
patch replaces, and the source it was written against (checked at start-up by
``streams.runtime.faust_patches.apply``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Target:
    """A faust-streaming or aiokafka function a patch replaces, and the SHA-256 of the
    source (``inspect.getsource``) the patch was written against."""

    owner: type
    name: str
    sha256: str
    # Taken at import, before any patch: apply() may run more than once in a process.
    upstream: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.upstream = getattr(self.owner, self.name, None)

    @property
    def path(self) -> str:
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"

    def replace(self, replacement: Callable[..., Any]) -> None:
        setattr(self.owner, self.name, replacement)


@dataclass(frozen=True)
class Patch:
    install: Callable[[], None]
    targets: tuple[Target, ...]

    @property
    def name(self) -> str:
        return self.install.__name__


#: Every patch, in the order ``apply()`` installs them.
PATCHES: list[Patch] = []


def registers(*targets: Target) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Register a patch function with the upstream functions it replaces."""

    def register(install: Callable[[], None]) -> Callable[[], None]:
        PATCHES.append(Patch(install, targets))
        return install

    return register
