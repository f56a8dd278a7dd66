"""Fixtures: a real broker and Redis for the session, unique topics per test; the check that
keeps the markers of pyproject.toml (broker, redis, e2e) honest. Plain values and the event
builder are in tests/factories.py."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from streams.runtime.config import Settings
from streams.tools.stack import Stack, answers, broker_address

BASE = Settings.from_env()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The embedded stack; started if it does not answer, stopped only if we started it."""
    s = Stack(BASE)
    was_up = answers(*broker_address(BASE))
    s.up()
    yield s
    if not was_up:
        s.down()


@pytest.fixture
def make_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with a unique topic prefix and app id per call (the one place that makes a
    prefix), ``data_dir`` under the test's tmp_path, topics created.

    ``base``: the settings to start from (the environment's by default; a test of settings
    read from variables passes its own); ``create_topics=False`` for a test that talks only
    to Redis or whose broker refuses the admin client. The embedded stack is started (if it
    does not answer) when the settings point at its broker; a test with a private broker
    passes its ``bootstrap_servers`` (or a ``base`` with them) and does not need the stack.
    """

    def make(*, base: Settings = BASE, create_topics: bool = True, **overrides: object) -> Settings:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        values = {
            "topic_prefix": prefix,
            "app_id": prefix,
            "data_dir": str(tmp_path / "data"),
            **overrides,
        }
        settings = dataclasses.replace(base, **values)  # type: ignore[arg-type]
        if settings.bootstrap_servers == BASE.bootstrap_servers:
            request.getfixturevalue("stack")
        if create_topics:
            Stack(settings).create_topics()
        return settings

    return make


@pytest.fixture
def redis_client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(BASE.redis_url, decode_responses=True)


# --- markers --------------------------------------------------------------------------

NEEDS = ("broker", "redis", "e2e")
# Fixtures that reach the shared stack, and the markers a test using them carries (any one).
FIXTURE_NEEDS = {
    "stack": ("broker", "redis"),
    "make_settings": ("broker", "redis"),
    "redis_client": ("redis",),
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail the run when a test under tests/e2e carries none of the markers broker, redis and
    e2e, or a test uses a fixture of the stack without the marker it implies, so that
    ``make test-fast`` (``-m "not broker and not redis and not e2e"``) needs neither. Runs
    before ``-m`` deselects anything: every collected test is checked."""
    e2e_dir = Path(__file__).parent / "e2e"
    unmarked = []
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        if item.path.is_relative_to(e2e_dir) and not marks & set(NEEDS):
            unmarked.append(f"{item.nodeid}: none of {', '.join(NEEDS)}")
        for fixture, needs in FIXTURE_NEEDS.items():
            if fixture in getattr(item, "fixturenames", ()) and not marks & set(needs):
                unmarked.append(
                    f"{item.nodeid}: uses {fixture} but is not marked {'/'.join(needs)}"
                )
    if unmarked:
        raise pytest.UsageError(
            "tests without the markers of what they need (pyproject.toml "
            "[tool.pytest.ini_options] markers):\n  " + "\n  ".join(unmarked)
        )
