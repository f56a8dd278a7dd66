"""The operator API (``/v1``): reads of the Redis views and actions on addresses.

Reads come from the views the view updater keeps (``streams/serving/views.py``). Actions
(lift, denylist, undenylist) become events of the ``operator`` input family, answered 202
once the broker has them: the workers apply them. Errors have one shape,
``{"error": {"code": ..., "message": ...}}``: 400 bad parameter or body, 404 not found,
409 conflict, 503 (with Retry-After) view store or broker unreachable. ``/openapi.json``
describes every route, from the table the routes are registered from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import redis
import redis.asyncio as aioredis
from aiohttp import web

from streams.pipeline.topics import Topic, input_key
from streams.runtime.codec import Codec, DecodeError
from streams.runtime.validate import validate_event
from streams.runtime.vendor_records import Record
from streams.service import api_params as params
from streams.service.acks import BrokerUnavailable
from streams.service.api_dlq import DlqUnavailable, read_dead_letters
from streams.service.api_openapi import ApiRoute, Param, avro_schema, document
from streams.service.context import ServiceContext
from streams.service.errors import error_response
from streams.serving.views import LISTED_STATES, AsyncViewReader

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
MAX_ACTION_BODY = 65536
DLQ_DEFAULT_WINDOW_MS = 24 * 3600 * 1000
ACTIONS = ("lift", "denylist", "undenylist")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error(status: int, code: str, message: str) -> web.Response:
    return error_response(status, message, code, retry_after_s=RETRY_AFTER_S)


def guarded(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Every failure the caller can act on, in the one error shape."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error(exc.status, exc.code, exc.message)
        except params.ParamError as exc:
            return error(400, "bad_parameter", str(exc))
        except (redis.RedisError, OSError) as exc:
            log.warning("view store unreachable: %s", type(exc).__name__)
            return error(503, "view_store_unavailable", "the Redis view store is unreachable")
        except (BrokerUnavailable, DlqUnavailable) as exc:
            log.warning("broker unavailable: %s", exc)
            return error(503, "broker_unavailable", f"the broker is unreachable: {exc}")

    return handle


class OperatorApi:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.client = aioredis.Redis.from_url(
            ctx.settings.redis_url,
            socket_timeout=5,
            socket_connect_timeout=2,
            decode_responses=True,
        )
        self.views = AsyncViewReader(self.client, ctx.views)
        self.codec = Codec.from_settings(ctx.settings)

    async def _one(self, kind: str, identifier: str, what: str) -> web.Response:
        record = await self.views.read(kind, identifier)
        if record is None:
            raise ApiError(404, "not_found", f"no {what} with this id in the views")
        return web.json_response(record)

    async def message(self, request: web.Request) -> web.Response:
        return await self._one("msg", request.match_info["message_id"], "message")

    async def address(self, request: web.Request) -> web.Response:
        return await self._one("addr", request.match_info["address"].lower(), "address")

    async def delivery(self, request: web.Request) -> web.Response:
        return await self._one("kpi", request.match_info["delivery_id"], "delivery")

    async def throttle_one(self, request: web.Request) -> web.Response:
        return await self._one("throttle", request.match_info["key"], "throttle setting")

    async def reputation(self, request: web.Request) -> web.Response:
        return await self._one("reputation", request.match_info["key"], "reputation window")

    async def throttle_all(self, _request: web.Request) -> web.Response:
        records = await self.views.scan("throttle")
        return web.json_response({"items": sorted(records, key=lambda r: str(r.get("key")))})

    def _query(self, request: web.Request) -> tuple[tuple[str, ...], str | None, str | None]:
        q = request.query
        return (
            params.parse_states(q.get("state")),
            params.parse_domain(q.get("domain")),
            params.parse_cursor(q.get("cursor")),
        )

    async def quarantine(self, request: web.Request) -> web.Response:
        states, domain, cursor = self._query(request)
        limit = params.parse_limit(request.query.get("limit"))
        low, high = params.lex_range(domain, cursor)
        items, last = await self.views.listed(states, low, high, limit)
        return web.json_response({"items": items, "next_cursor": last})

    async def quarantine_csv(self, request: web.Request) -> web.StreamResponse:
        states, domain, cursor = self._query(request)
        low, high = params.lex_range(domain, cursor)
        items, last = await self.views.listed(states, low, high, params.MAX_LIMIT)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": 'attachment; filename="quarantine.csv"',
            }
        )
        await response.prepare(request)
        await response.write(params.csv_header().encode())
        while True:
            await response.write("".join(map(params.csv_row, items)).encode())
            if last is None:
                break
            try:
                low, _ = params.lex_range(domain, last)
                items, last = await self.views.listed(states, low, high, params.MAX_LIMIT)
            except (redis.RedisError, OSError) as exc:
                # The status is sent: break the connection, so that the caller sees the
                # export cut short rather than a complete file.
                log.warning("quarantine export cut: view store unreachable (%s)", exc)
                if request.transport is not None:
                    request.transport.close()
                return response
        await response.write_eof()
        return response

    async def dlq(self, request: web.Request) -> web.Response:
        now = int(time.time() * 1000)
        since = params.parse_since(request.query.get("since"), now, DLQ_DEFAULT_WINDOW_MS)
        limit = params.parse_limit(request.query.get("limit"))
        letters = await asyncio.get_running_loop().run_in_executor(
            None, read_dead_letters, self.ctx.settings, self.codec, since, limit
        )
        return web.json_response({"since": since, "items": letters})

    def action(self, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def act(request: web.Request) -> web.Response:
            started = time.monotonic()
            address = request.match_info["address"]
            reason, actor = await _action_body(request)
            if kind == "lift":
                current = await self.views.read("addr", address.lower())
                if current is not None and current.get("state") == "denylisted":
                    raise ApiError(
                        409, "denylisted", "the address is denylisted: undenylist it instead"
                    )
            event = {
                "event_id": str(uuid.uuid4()),
                "event_time": int(time.time() * 1000),
                "recipient": address,
                "kind": kind,
                "actor": actor,
                "reason": reason,
            }
            try:
                validate_event(Topic.OPERATOR, event)
            except DecodeError as exc:
                raise ApiError(400, "bad_request", exc.reason) from None
            topic = self.ctx.settings.topic(Topic.OPERATOR)
            value = self.codec.encode(Topic.OPERATOR, event, topic)
            record = Record(Topic.OPERATOR, input_key(address), value, None)
            await self.ctx.producer.send([record], started)
            log.info("operator %s accepted (event %s)", kind, event["event_id"])
            return web.json_response(
                {"event_id": event["event_id"], "status": "accepted"}, status=202
            )

        return act

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(document(self.routes(), _version()))

    def routes(self) -> list[ApiRoute]:
        """Every ``/v1`` route: its handler and its description."""
        address = Param("address", "path", "a recipient address (any case)")
        paging = (
            Param(
                "state",
                "query",
                "quarantined or denylisted; both when absent",
                {"type": "string", "enum": list(LISTED_STATES)},
            ),
            Param("domain", "query", "only the addresses of this domain"),
            Param("cursor", "query", "next_cursor of the previous page"),
        )
        limit = Param(
            "limit",
            "query",
            f"1 to {params.MAX_LIMIT} (default {params.DEFAULT_LIMIT})",
            {"type": "integer", "minimum": 1, "maximum": params.MAX_LIMIT},
        )
        record = avro_schema(Topic.ADDRESS)
        listing = {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": record},
                "next_cursor": {"type": ["string", "null"]},
            },
        }
        action_body = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "reason": {"type": "string", "maxLength": 1000},
                "actor": {"type": "string", "description": "who acts, if no X-Actor header"},
            },
        }
        accepted = {
            "type": "object",
            "properties": {
                "event_id": {"type": "string"},
                "status": {"type": "string", "enum": ["accepted"]},
            },
        }
        table = [
            ApiRoute(
                "GET",
                "/v1/messages/{message_id}",
                "a message's delivery status",
                self.message,
                (Param("message_id", "path", "Campaign's message id"),),
                body=avro_schema(Topic.STATUS),
                errors=(404, 503),
            ),
            ApiRoute(
                "GET",
                "/v1/addresses/{address}",
                "an address's health (quarantine)",
                self.address,
                (address,),
                body=record,
                errors=(404, 503),
            ),
            ApiRoute(
                "GET",
                "/v1/deliveries/{delivery_id}",
                "a delivery's KPIs and Success %",
                self.delivery,
                (Param("delivery_id", "path", "Campaign's delivery id"),),
                body=avro_schema(Topic.KPI),
                errors=(404, 503),
            ),
            ApiRoute(
                "GET",
                "/v1/throttle",
                "every throttle setting",
                self.throttle_all,
                body={
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": avro_schema(Topic.THROTTLE)}
                    },
                },
                errors=(503,),
            ),
            ApiRoute(
                "GET",
                "/v1/throttle/{key}",
                "one throttle setting",
                self.throttle_one,
                (Param("key", "path", "group name, domain, or ip|group"),),
                body=avro_schema(Topic.THROTTLE),
                errors=(404, 503),
            ),
            ApiRoute(
                "GET",
                "/v1/reputation/{key}",
                "the latest reputation window of a key",
                self.reputation,
                (Param("key", "path", "domain, group, or ip|group"),),
                body=avro_schema(Topic.REPUTATION),
                errors=(404, 503),
            ),
            ApiRoute(
                "GET",
                "/v1/quarantine",
                "quarantined and denylisted addresses, paged",
                self.quarantine,
                (*paging, limit),
                body=listing,
            ),
            ApiRoute(
                "GET",
                "/v1/quarantine.csv",
                "the same, as one streamed CSV export",
                self.quarantine_csv,
                paging,
                media="text/csv",
            ),
            ApiRoute(
                "GET",
                "/v1/dlq",
                "dead letters with their reasons",
                self.dlq,
                (Param("since", "query", "epoch ms or ISO 8601 (default: 24 hours ago)"), limit),
                body={
                    "type": "object",
                    "properties": {
                        "since": {"type": "integer"},
                        "items": {"type": "array", "items": {"type": "object"}},
                    },
                },
            ),
        ]
        for kind in ACTIONS:
            table.append(
                ApiRoute(
                    "POST",
                    f"/v1/addresses/{{address}}/{kind}",
                    f"{kind} an address (as an operator event)",
                    self.action(kind),
                    (address, Param("X-Actor", "header", "who acts")),
                    ok=202,
                    body=accepted,
                    request=action_body,
                    errors=(400, 401, 409, 413, 503) if kind == "lift" else (400, 401, 413, 503),
                )
            )
        return table

    async def close(self, _app: web.Application) -> None:
        await self.client.aclose()


async def _action_body(request: web.Request) -> tuple[str | None, str]:
    """(reason, actor) from the JSON body and the ``X-Actor`` header."""
    if request.content_length is not None and request.content_length > MAX_ACTION_BODY:
        raise ApiError(413, "too_large", f"body over {MAX_ACTION_BODY} bytes")
    raw = await request.content.read(MAX_ACTION_BODY + 1)
    if len(raw) > MAX_ACTION_BODY:
        raise ApiError(413, "too_large", f"body over {MAX_ACTION_BODY} bytes")
    body: Any = {}
    if raw.strip():
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(400, "bad_request", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    unknown = set(body) - {"reason", "actor"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown fields: {', '.join(sorted(unknown))}")
    reason, body_actor = body.get("reason"), body.get("actor")
    if not isinstance(reason, str | None) or not isinstance(body_actor, str | None):
        raise ApiError(400, "bad_request", "reason and actor must be strings")
    header = request.headers.get("X-Actor")
    if header is not None and body_actor is not None and header != body_actor:
        raise ApiError(400, "bad_request", "X-Actor and the body's actor differ")
    actor = header if header is not None else body_actor
    if actor is None or not actor.strip():
        raise ApiError(400, "actor_required", "say who acts: an X-Actor header or an actor field")
    return reason, actor


def _version() -> str:
    try:
        return metadata.version("mta-feedback")
    except metadata.PackageNotFoundError:
        return "0"


API = web.AppKey("operator_api", OperatorApi)


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    api = OperatorApi(ctx)
    app[API] = api
    for route in api.routes():
        app.router.add_route(route.method, route.path, guarded(route.handler))
    app.router.add_get("/openapi.json", api.openapi)
    app.on_cleanup.append(api.close)
