"""Fixtures: a real broker and Redis for the session, unique topics per test."""

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
def make_settings(stack: Stack, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with a unique topic prefix and app id per call, topics created."""

    def make(**overrides: object) -> Settings:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        settings = dataclasses.replace(
            BASE,
            topic_prefix=prefix,
            app_id=prefix,
            data_dir=str(tmp_path / "data"),
            **overrides,  # type: ignore[arg-type]
        )
        Stack(settings).create_topics()
        return settings

    return make


@pytest.fixture
def redis_client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(BASE.redis_url, decode_responses=True)
