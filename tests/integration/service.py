"""A ``mta-feedback serve`` subprocess on a free loopback port, real HTTP calls to it, and
what it wrote to the topics (shared by the service's integration and end-to-end tests)."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from streams.runtime.config import Settings
from streams.serving.consumer import OutputConsumer, Record
from streams.testing.worker import settings_env

INPUTS = ("send", "bounce", "retry")
_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: Any  # the decoded JSON, or the raw bytes when not JSON

    def bad_indexes(self) -> list[int]:
        return [b["index"] for b in self.body["bad"]]


class ServiceProcess:
    """One ``mta-feedback serve`` child; ``env`` adds variables to the settings' own."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        env: dict[str, str] | None = None,
        args: Iterable[str] = (),
    ) -> None:
        self.env = {**settings_env(settings), "MTA_HTTP_LISTEN": "127.0.0.1:0", **(env or {})}
        self.args = list(args)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.tools.cli", "serve", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log_text())
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"serve not listening after {timeout:.0f}s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as an operator stops it; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def call(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        source: str | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        """One request on a fresh connection (from ``source``, a local address, if given);
        an iterable body is sent chunked."""
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=timeout, source_address=(source, 0) if source else None
        )
        try:
            chunked = body is not None and not isinstance(body, bytes)
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            decoded: Any = json.loads(raw)
        except ValueError:
            decoded = raw
        return Answer(response.status, dict(response.getheaders()), decoded)

    def post(self, path: str, body: bytes | Iterable[bytes], **kwargs: Any) -> Answer:
        return self.call("POST", path, body, **kwargs)


def read_topic(
    settings: Settings, name: str, expected: int, timeout: float = 60.0, linger: float = 2.0
) -> list[Record]:
    """Every record of topic ``name``: waits for ``expected`` of them, then ``linger``
    seconds more, so that records beyond those expected are seen too."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    with OutputConsumer(settings, name) as consumer:
        while time.monotonic() < deadline and len(out) < expected:
            out.extend(consumer.records(idle_timeout=1.0, max_wait=2.0))
        out.extend(consumer.records(idle_timeout=linger, max_wait=linger * 2))
    return out


def input_events(settings: Settings, expected: dict[str, int]) -> dict[str, list[Record]]:
    """The records of each input topic, ``expected`` giving how many each should hold."""
    return {f: read_topic(settings, f, expected.get(f, 0), linger=1.0) for f in INPUTS}
