"""Helpers for tests of the faust-streaming patches: an app that is never started, and
switching one patch on or off for the length of a test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust

from streams.runtime import faust_patches

if TYPE_CHECKING:  # the package ships without the test runner
    import pytest


def use_patch(monkeypatch: pytest.MonkeyPatch, name: str, *, patched: bool) -> None:
    """Put back the upstream functions the patch ``name`` replaces, then install it if
    ``patched``; the test's end restores whatever was installed before."""
    (patch,) = (p for p in faust_patches.PATCHES if p.name == name)
    for target in patch.targets:
        monkeypatch.setattr(target.owner, target.name, target.upstream)
    if patched:
        patch.install()


def unstarted_app() -> faust.App:
    """A Faust app that is never started: nothing here talks to its broker."""
    return faust.App("faust-patches-test", broker="kafka://127.0.0.1:1", autodiscover=False)
