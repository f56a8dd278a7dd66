"""The operator API's route table and the OpenAPI 3.1 document built from it.

Every ``/v1`` route is one ``ApiRoute``: the server registers its handler from the same
entry that describes it here, so the document cannot drift from what is served. Record
schemas come from the Avro schemas of the views (``schemas/*.avsc``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from streams.runtime.codec import load_schema_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
ERROR_TEXT = {
    400: "bad parameter or body",
    401: "bearer token missing or wrong",
    404: "not found",
    409: "conflict with the address's state",
    413: "body too large",
    503: "view store or broker unreachable (see Retry-After)",
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path", "query" or "header"
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str  # the aiohttp pattern, which is also OpenAPI's path template
    summary: str
    handler: Handler
    params: tuple[Param, ...] = ()
    ok: int = 200
    body: dict[str, Any] | None = None  # JSON schema of the ok answer
    media: str = "application/json"
    request: dict[str, Any] | None = None  # JSON schema of the request body
    errors: tuple[int, ...] = (400, 503)


def avro_schema(name: str) -> dict[str, Any]:
    """The JSON schema of a view record, from the Avro schema of topic ``name``."""
    raw = load_schema_json(name)
    props = {
        f["name"]: _json_type(f["type"]) | {"description": f.get("doc", "")} for f in raw["fields"]
    }
    return {"type": "object", "description": raw.get("doc", ""), "properties": props}


def _json_type(avro: Any) -> dict[str, Any]:
    if isinstance(avro, list):
        inner = [_json_type(t) for t in avro if t != "null"]
        one = inner[0] if len(inner) == 1 else {"oneOf": inner}
        return {"oneOf": [one, {"type": "null"}]} if "null" in avro else one
    if isinstance(avro, dict):
        if avro["type"] == "enum":
            return {"type": "string", "enum": list(avro["symbols"])}
        return _json_type(avro["type"])
    return {
        "string": {"type": "string"},
        "int": {"type": "integer"},
        "long": {"type": "integer"},
        "double": {"type": "number"},
        "float": {"type": "number"},
        "boolean": {"type": "boolean"},
        "bytes": {"type": "string"},
    }[avro]


def document(routes: list[ApiRoute], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}{route.path.replace('/', '_')}".replace("{", "")
            .replace("}", "")
            .replace(".", "_"),
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.where == "path",
                    "description": p.description,
                    "schema": p.schema,
                }
                for p in route.params
            ],
            "responses": {
                str(route.ok): {
                    "description": "ok" if route.ok == 200 else "accepted",
                    "content": {route.media: {"schema": route.body or {"type": "string"}}},
                },
                **{
                    str(code): {
                        "description": ERROR_TEXT[code],
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    }
                    for code in route.errors
                },
            },
        }
        if route.request is not None:
            op["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": route.request}},
            }
        if route.method != "GET":
            op["security"] = [{"bearer": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "mta-feedback operator API", "version": version},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
