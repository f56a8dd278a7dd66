"""``GET /metrics`` and ``GET /readyz`` of the HTTP service, and the middleware that counts
and times every request by route template (``/v1/addresses/{address}``, never the path
itself: addresses appear in paths) and status."""

from __future__ import annotations

import asyncio
import time

import redis
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from streams.runtime.metrics import metrics_response, readiness_response
from streams.service.context import ServiceContext

REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)
UNMATCHED = "(unmatched)"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.requests = Counter(
            "mta_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mta_http_request_duration_seconds",
            "HTTP request handling time, by route template",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )

    def middleware(self) -> Middleware:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                route = route_template(request)
                self.requests.labels(route, request.method, str(status)).inc()
                self.duration.labels(route).observe(time.perf_counter() - started)

        return count


def route_template(request: web.Request) -> str:
    """The matched route's template; one label value for every path no route matched."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    if resource is None or request.match_info.http_exception is not None:
        return UNMATCHED
    return resource.canonical


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    metrics = HttpMetrics()
    app[REGISTRY_KEY] = metrics.registry
    # Outermost, so that requests the access rules refuse are counted too.
    app.middlewares.insert(0, metrics.middleware())

    def redis_reachable() -> bool:
        try:
            return bool(ctx.views.client.ping())
        except redis.RedisError:
            return False

    async def get_metrics(_request: web.Request) -> web.Response:
        return metrics_response(generate_latest(metrics.registry))

    async def readyz(_request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        broker, views = await asyncio.gather(
            loop.run_in_executor(None, ctx.producer.broker_reachable),
            loop.run_in_executor(None, redis_reachable),
        )
        return readiness_response({"broker": broker, "redis": views})

    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/readyz", readyz)
