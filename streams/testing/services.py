"""Private redis-server and Tansu brokers on free ports, for tests that must kill, restart or
reconfigure a service without touching the shared ones."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from streams.tools.stack import answers, tansu_binary


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not answers("127.0.0.1", port, timeout=0.2):
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers on port {port} after {timeout:.0f}s")
        time.sleep(0.05)


class _Service:
    """A child process with its log file; ``kill`` is SIGKILL, ``stop`` is SIGTERM."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], port: int, timeout: float = 15.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_for(port, self.proc, self.log_path, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class RedisServer(_Service):
    """redis-server without persistence: a restart comes back empty.

    ``acl_user`` = (name, password) adds an ACL user allowed everything and turns the
    default user off, so only that user can connect. ``tls`` = (certificate, key, CA
    bundle) files serves TLS only, on ``port``.
    """

    def __init__(
        self,
        log_path: Path,
        port: int | None = None,
        acl_user: tuple[str, str] | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        super().__init__(log_path)
        self.port = port or free_port()
        self.acl_user = acl_user
        self.tls = tls

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        if self.acl_user:
            user, password = self.acl_user
            return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}/0"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        argv = [server, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.tls:
            cert, key, ca = self.tls
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            argv += ["--tls-ca-cert-file", str(ca)]
        else:
            argv += ["--port", str(self.port)]
        if self.acl_user:
            user, password = self.acl_user
            argv += ["--user", user, "on", f">{password}", "~*", "&*", "+@all"]
            argv += ["--user", "default", "off"]
        self._spawn(argv, self.port)
        return self


class TansuBroker(_Service):
    """A Tansu broker in memory; ``advertised_port`` lets clients reach it through a proxy."""

    def __init__(
        self,
        log_path: Path,
        port: int | None = None,
        advertised_port: int | None = None,
        authentication: bool = False,
    ) -> None:
        super().__init__(log_path)
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.authentication = authentication

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self) -> TansuBroker:
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.authentication:
            argv.append("--authentication")
        self._spawn(argv, self.port)
        return self


def long_run() -> bool:
    """True under ``make reliability`` (MTA_RELIABILITY=long): full outages and volumes."""
    return os.environ.get("MTA_RELIABILITY", "short") == "long"
