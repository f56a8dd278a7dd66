"""``mta-feedback serve``: the HTTP service — webhook ingest, the KumoMTA TSA API, health.

Listens on ``MTA_HTTP_LISTEN`` and prints where once it does. Every route passes the
access rules of ``streams/service/access.py``; the service refuses (exit 2) to listen
beyond loopback while no credential is configured. SIGINT or SIGTERM stops it: it stops
accepting, lets the requests under way finish, then delivers what its producer holds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from streams.runtime.config import ConfigError, Settings
from streams.service import (
    access,
    api_routes,
    errors,
    ingest_routes,
    kumo_routes,
    metrics_routes,
    status_page,
)
from streams.service.acks import DEFAULT_ACK_TIMEOUT_S, AsyncProducer
from streams.service.api_access_log import RouteAccessLogger
from streams.service.context import ServiceContext
from streams.serving.views import ViewStore

log = logging.getLogger(__name__)


class ListenError(OSError):
    """The service cannot listen on its address."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ack-timeout",
        type=float,
        default=DEFAULT_ACK_TIMEOUT_S,
        metavar="S",
        help="longest wait for the broker's acknowledgement before answering 503 "
        f"(default {DEFAULT_ACK_TIMEOUT_S:g}; SparkPost gives up after 10)",
    )


def build_app(ctx: ServiceContext) -> web.Application:
    # Access rules first; aiohttp's own 404 and 405 then leave in the one error shape.
    app = web.Application(middlewares=[access.access_middleware, errors.json_errors])
    app[access.POLICY] = access.AccessPolicy(ctx.settings)
    ingest_routes.add_routes(app, ctx)
    kumo_routes.add_routes(app, ctx)
    status_page.add_routes(app, ctx)
    api_routes.add_routes(app, ctx)
    metrics_routes.add_routes(app, ctx)

    async def healthz(_request: web.Request) -> web.Response:
        reachable = await asyncio.get_running_loop().run_in_executor(
            None, ctx.producer.broker_reachable
        )
        return web.json_response(
            {"status": "ok", "broker": "reachable" if reachable else "unreachable"}
        )

    app.router.add_get("/healthz", healthz)
    return app


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(settings: Settings, ack_timeout_s: float, ready: Callable[[str], None]) -> None:
    """Run until SIGINT or SIGTERM; ``ready`` gets the URL once the service listens."""
    producer = AsyncProducer(settings, ack_timeout_s)
    producer.start()
    ctx = ServiceContext(settings, ViewStore.from_settings(settings), producer)
    debug = settings.log_level == "debug"
    runner = web.AppRunner(
        build_app(ctx),
        handle_signals=False,
        access_log=logging.getLogger("aiohttp.access") if debug else None,
        access_log_class=RouteAccessLogger,  # route templates: paths carry addresses
        # A stop lets the requests under way have their broker's answer.
        shutdown_timeout=ack_timeout_s + 1,
    )
    await runner.setup()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    try:
        host, port = _host_port(settings.http_listen)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {settings.http_listen}: {exc}") from None
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{shown}:{bound_port}"
        ready(url)
        await stop.wait()
    finally:
        await runner.cleanup()
        left = await producer.close()
        if left:
            log.error("%d records were not delivered before the service stopped", left)
        ctx.views.client.close()


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"mta-feedback serve: configuration error: {exc}", file=sys.stderr)
        return 2
    refusal = access.listen_refusal(settings)
    if refusal:
        print(f"mta-feedback serve: {refusal}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    def ready(url: str) -> None:
        print(f"mta-feedback serve: listening on {url}", flush=True)

    try:
        asyncio.run(serve(settings, args.ack_timeout, ready))
    except ListenError as exc:
        print(f"mta-feedback serve: {exc}", file=sys.stderr)
        return 1
    print("mta-feedback serve: stopped", flush=True)
    return 0
