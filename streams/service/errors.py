"""The one error shape of every route: ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

# How long a caller should wait before retrying a 503 (seconds).
RETRY_AFTER_S = 30

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    503: "unavailable",
}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    retry_after_s: int = RETRY_AFTER_S,
) -> web.Response:
    """An error answer; a 503 always says when to come back."""
    all_headers = dict(headers or {})
    if status == 503:
        all_headers.setdefault("Retry-After", str(retry_after_s))
    body = {"error": {"code": code or _CODES.get(status, "error"), "message": message}}
    return web.json_response(body, status=status, headers=all_headers or None)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 404 and 405 (no such route, wrong method) in the same shape."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, exc.reason, headers=headers)
