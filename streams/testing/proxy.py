"""A TCP proxy that can cut the network between a client and a broker, for outage tests.

Two kinds of outage:
- ``refuse``: open connections are reset and new ones refused, as when the broker is down.
- ``blackhole``: connections stay open but nothing gets through either way, as in a network
  partition; requests the broker already processed lose their responses. On ``restore``
  those connections are reset (their byte streams are no longer whole), and the client
  reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Literal

Mode = Literal["forward", "refuse", "blackhole"]


class TcpProxy:
    def __init__(
        self,
        listen_port: int,
        target_port: int,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: accept TLS connections only, and forward in plain TCP (a TLS listener
        in front of a broker that has none)."""
        self.tls = tls
        self.listen_port = listen_port
        self.target_port = target_port
        self.host = host
        self.mode: Mode = "forward"
        self.connections = 0  # accepted while forwarding, for the tests to check reconnects
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def outage(self, mode: Literal["refuse", "blackhole"]) -> None:
        self._call(self._cut(mode))

    def restore(self) -> None:
        self._call(self._restore())

    def stop(self) -> None:
        self._call(self._cut("refuse"))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.listen_port, ssl=self.tls
        )

    async def _cut(self, mode: Literal["refuse", "blackhole"]) -> None:
        self.mode = mode
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            self._reset_all()

    async def _restore(self) -> None:
        # Blackholed streams have lost bytes mid-frame: reset them so clients reconnect.
        self._reset_all()
        self.mode = "forward"
        if self._server is None:
            await self._listen()

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode != "forward":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if self.mode == "forward":
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
