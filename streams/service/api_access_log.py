"""The service's access log: route templates, never paths, which carry addresses and ids."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger


def route_template(request: web.BaseRequest) -> str:
    """The pattern the request was routed by (``/v1/addresses/{address}``), or a
    placeholder for a request that matched no route."""
    match_info = getattr(request, "match_info", None)
    resource = match_info.route.resource if match_info is not None else None
    return resource.canonical if resource is not None else "(unrouted)"


class RouteAccessLogger(AbstractAccessLogger):
    """One line per request: caller, method, route template, status, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %d %.1fms",
            request.remote,
            request.method,
            route_template(request),
            response.status,
            time * 1000,
        )
