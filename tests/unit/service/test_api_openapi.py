"""The OpenAPI document is built from the routes the service registers: every /v1 route is
in it and nothing else is, and it is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web
from openapi_spec_validator import validate

from streams.runtime.config import Settings
from streams.service.api_openapi import avro_schema, document
from streams.service.api_routes import API
from streams.service.context import ServiceContext
from streams.service.server import build_app
from streams.serving.views import ViewStore


def _app() -> web.Application:
    # Nothing connects while routes are registered: Redis and the broker are not needed.
    settings = dataclasses.replace(Settings.from_env(), redis_url="redis://127.0.0.1:1/0")
    return build_app(ServiceContext(settings, ViewStore.from_settings(settings)))


def test_every_registered_v1_route_is_in_the_document_and_nothing_else() -> None:
    async def check() -> None:
        app = _app()
        registered = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None
            and route.resource.canonical.startswith("/v1/")
            and route.method != "HEAD"  # aiohttp adds one beside each GET
        }
        doc = document(app[API].routes(), "1")
        described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert registered == described
        assert len(registered) >= 12
        validate(doc)
        await app[API].close(app)

    asyncio.run(check())


def test_record_schemas_come_from_the_avro_schemas() -> None:
    status = avro_schema("status")
    assert status["properties"]["status"]["enum"] == ["taken_into_account", "sent", "failed"]
    assert status["properties"]["attempts"]["type"] == "integer"
    nullable = status["properties"]["failure_reason"]["oneOf"]
    assert {"type": "null"} in nullable and {"type": "string"} in nullable
    assert avro_schema("kpi")["properties"]["success_pct"]["type"] == "number"
