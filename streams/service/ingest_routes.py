"""The ingest endpoints: MTA records in, input events (and dead letters) out.

- ``POST /webhooks/sparkpost``: one SparkPost / Momentum webhook batch (a JSON array).
- ``POST /publish_log_v1``: one KumoMTA log record, as KumoMTA's TSA publisher posts it.
- ``POST /webhooks/kumomta``: KumoMTA log records from a log hook (an array or JSON lines).

Each answers 200 only once the broker has every event and dead letter of the request, so
the MTA's own retry covers any failure before that. A bad record never fails its request
(the MTA would send it again forever): it is dead-lettered with its raw text and reason,
and the 200 body lists it. The other answers: 401/403 (access), 413 (body over
``MTA_HTTP_MAX_BODY_BYTES``, refused before it is read whole) and 503 with Retry-After
while the broker does not confirm in time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from streams.adapters.base import Bad, Result, Skip, bad
from streams.adapters.kumomta import KumoMtaConverter
from streams.adapters.sparkpost import SparkPostConverter
from streams.pipeline.topics import INPUT_TOPICS, Topic
from streams.runtime.codec import Codec
from streams.runtime.vendor_records import Record, dead_letter, to_record
from streams.service import bodies, kumo_sites
from streams.service.acks import BrokerUnavailable
from streams.service.context import ServiceContext
from streams.service.errors import error_response

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30
# Records converted between two chances for other requests to run (about 20 ms of work).
_SLICE = 200


@dataclass
class Outcome:
    """What a request's records became: the 200 body."""

    records: list[Record] = field(default_factory=list)
    accepted: int = 0
    skipped: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "skipped": self.skipped, "bad": self.bad}


def _utf8_safe(text: str) -> str:
    # Lone surrogates (valid in JSON escapes) cannot be encoded into the Avro dead letter.
    return text.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class Route:
    path: str
    parse: Callable[[bytes], list[Any]]
    convert: Callable[[Any], list[Result]]  # one element; the converters keep no state
    kumo: bool  # its records also go to the KumoMTA site tracker


class Ingest:
    """The handlers of the ingest routes over one service context."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.codec = Codec.from_settings(ctx.settings)
        self.names = {f: ctx.settings.topic(f) for f in (*INPUT_TOPICS, Topic.DLQ)}
        self.limit = ctx.settings.http_max_body_bytes

    async def outcome(self, route: Route, elements: list[Any]) -> Outcome:
        """Convert every element; never raises for what a record holds. A large batch
        lets other requests in between slices, so that it does not hold them up."""
        out = Outcome()
        source = f"http:{route.path}"
        for index, element in enumerate(elements):
            if index and index % _SLICE == 0:
                await asyncio.sleep(0)
            if isinstance(element, Bad):
                results: list[Result] = [element]
            else:
                results = self._convert(route, element)
            for result in results:
                if isinstance(result, Skip):
                    out.skipped += 1
                    continue
                if isinstance(result, Bad):
                    result = Bad(_utf8_safe(result.raw), _utf8_safe(result.reason))
                record = self._record(result, source, index)
                out.records.append(record)
                if record.topic == Topic.DLQ:
                    out.bad.append({"index": index, "reason": record.error})
                else:
                    out.accepted += 1
        return out

    def _convert(self, route: Route, element: Any) -> list[Result]:
        try:
            return route.convert(element)
        except Exception as exc:
            # A converter must return Bad, not raise; if one does, the record is still kept
            # (dead-lettered), not retried by the MTA forever.
            log.exception("converter of %s raised on a record", route.path)
            return [bad(element, f"converter error: {type(exc).__name__}")]

    def _record(self, result: Result, source: str, index: int) -> Record:
        try:
            record = to_record(self.codec, result, source, index, self.names)
        except Exception as exc:
            # Values no schema check foresaw (e.g. an integer beyond 64 bits).
            raw = _utf8_safe(repr(result))
            reason = _utf8_safe(f"cannot be encoded: {type(exc).__name__}: {exc}")[:1000]
            record = dead_letter(self.codec, source, index, raw, reason, self.names[Topic.DLQ])
        assert record is not None  # skips were taken out before
        return record

    async def read_body(self, request: web.Request) -> bytes | None:
        """The body, or None once it is known to be over the limit (before reading it all)."""
        if request.content_length is not None and request.content_length > self.limit:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def handler(self, route: Route) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            try:
                return await self._handle(route, request)
            except BrokerUnavailable as exc:
                log.warning("%s answered 503: %s", route.path, exc)
                reason = f"broker unavailable: {exc}"
            except ConnectionError:
                # The caller hung up before its body was complete: nothing was taken.
                log.info("%s: the caller left before sending its whole body", route.path)
                reason = "connection lost"
            except Exception:
                # Nothing was acknowledged: the MTA's retry keeps the records.
                log.exception("%s failed", route.path)
                reason = "internal error"
            return error_response(503, reason, retry_after_s=RETRY_AFTER_S)

        return handle

    async def _handle(self, route: Route, request: web.Request) -> web.Response:
        started = time.monotonic()
        body = await self.read_body(request)
        if body is None:
            return error_response(413, f"body over MTA_HTTP_MAX_BODY_BYTES ({self.limit} bytes)")
        elements = route.parse(body)
        out = await self.outcome(route, elements)
        await self.ctx.producer.send(out.records, started)
        if out.bad:
            log.info(
                "%s: %d accepted, %d skipped, %d dead-lettered",
                route.path,
                out.accepted,
                out.skipped,
                len(out.bad),
            )
            log.debug("%s: bad records %s", route.path, out.bad)
        if route.kumo:
            await self._note([e for e in elements if isinstance(e, dict)])
        return web.json_response(out.body())

    async def _note(self, records: list[dict[str, Any]]) -> None:
        try:
            await kumo_sites.note(self.ctx, records)
        except Exception:
            # The records are on the broker already: the request has succeeded.
            log.exception("KumoMTA site tracking failed on %d records", len(records))


ROUTES = (
    Route("/webhooks/sparkpost", bodies.sparkpost_batch, SparkPostConverter().convert_item, False),
    Route("/publish_log_v1", bodies.kumo_records, KumoMtaConverter().convert_record, True),
    Route("/webhooks/kumomta", bodies.kumo_records, KumoMtaConverter().convert_record, True),
)


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    ingest = Ingest(ctx)
    for route in ROUTES:
        app.router.add_post(route.path, ingest.handler(route))
