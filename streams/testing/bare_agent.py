"""A Faust worker whose one agent does only the benchmark baseline's work: decode each
input event and update a dict. Same application configuration as the real worker, so
``mta-feedback bench`` can show what a Faust agent costs before any pipeline step does.

Run as ``python -m streams.testing.bare_agent`` with the worker's environment.
"""

from __future__ import annotations

from typing import Any

import faust

from streams.pipeline.topics import INPUT_TOPICS
from streams.runtime.app import faust_app
from streams.runtime.codec import Codec
from streams.runtime.config import Settings


def main() -> None:
    settings = Settings.from_env()
    app = faust_app(settings)
    codec = Codec.from_settings(settings)
    family_of = {settings.topic(name): name for name in INPUT_TOPICS}
    inputs = app.topic(*family_of, key_serializer="raw", value_serializer="raw")
    state: dict[str, dict[str, Any]] = {}

    @app.agent(inputs, name="bare")
    async def bare(stream: faust.StreamT) -> None:
        async for event in stream.events():
            msg = event.message
            record = codec.decode(family_of[msg.topic], msg.value)
            state[record["message_id"]] = record

    faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
