"""Avro codec: schemas from ``schemas/``, two wire formats, writer → reader resolution.

- Avro single-object encoding (``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of
  the writer schema's canonical form), used when no schema registry is configured.
- Confluent wire format (``00`` + 4-byte big-endian schema id), used when
  ``SCHEMA_REGISTRY_URL`` is set (``mock://...`` gives confluent-kafka's in-process mock).

The decoder accepts both whatever the configuration, and resolves the writer schema to the
current reader schema with fastavro, so producers on an older schema version keep working.
Decoded ``timestamp-millis`` fields stay integers (epoch ms): the domain code works in ms and
converting to ``datetime`` and back would cost time on the hot path.
"""

from __future__ import annotations

import copy
import io
import json
import os
import struct
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.pipeline.topics import SCHEMA_FILES

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"


class DecodeError(ValueError):
    """A record could not be decoded; ``kind`` is the dead-letter category."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def schema_dir() -> Path:
    """``MTA_SCHEMA_DIR`` or the repository's ``schemas/`` next to the package."""
    configured = os.environ.get("MTA_SCHEMA_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "schemas"


def load_schema_json(name: str) -> dict[str, Any]:
    path = schema_dir() / f"{SCHEMA_FILES[name]}.avsc"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Avro schema {path} not found; set MTA_SCHEMA_DIR to the schemas/ folder"
        ) from None


def _strip_logical_types(node: Any) -> Any:
    """Copy of a schema without logicalType annotations, so fastavro reads plain longs."""
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


class Codec:
    """Encodes and decodes the project's records; one instance per process is enough."""

    def __init__(self, registry: Any | None = None) -> None:
        self._registry = registry
        self._writers: dict[str, Any] = {}  # name → parsed schema (with logical types)
        self._readers: dict[str, Any] = {}  # name → parsed reader schema (plain longs)
        self._headers: dict[str, bytes] = {}  # name → wire header for encoding
        self._by_fingerprint: dict[bytes, Any] = {}  # 8 bytes → parsed writer (plain longs)
        self._by_id: dict[int, Any] = {}  # registry id → parsed writer (plain longs)
        for name in SCHEMA_FILES:
            raw = load_schema_json(name)
            self._writers[name] = fastavro.parse_schema(copy.deepcopy(raw))
            plain = fastavro.parse_schema(_strip_logical_types(raw))
            self._readers[name] = plain
            fp = schema_fingerprint(raw)
            self._by_fingerprint[fp] = plain
            self._headers[name] = SINGLE_OBJECT_MAGIC + fp

    @classmethod
    def from_settings(cls, schema_registry_url: str) -> Codec:
        if not schema_registry_url:
            return cls()
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return cls(SchemaRegistryClient.new_client({"url": schema_registry_url}))

    def register_history(self, raw_schema: dict[str, Any]) -> None:
        """Accept records written with an older version of a schema (single-object format)."""
        self._by_fingerprint[schema_fingerprint(raw_schema)] = fastavro.parse_schema(
            _strip_logical_types(raw_schema)
        )

    def header(self, name: str, subject: str | None = None) -> bytes:
        """Wire header for records of ``name``; registers the schema when a registry is set."""
        if self._registry is None:
            return self._headers[name]
        key = f"registry:{subject or name}"
        if key not in self._headers:
            from confluent_kafka.schema_registry import Schema

            schema_str = json.dumps(load_schema_json(name))
            schema_id = self._registry.register_schema(
                subject or f"{name}-value", Schema(schema_str, "AVRO")
            )
            self._headers[key] = CONFLUENT_MAGIC + struct.pack(">I", schema_id)
        return self._headers[key]

    def encode(self, name: str, record: dict[str, Any], subject: str | None = None) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header(name, subject))
        fastavro.schemaless_writer(buf, self._writers[name], record)
        return buf.getvalue()

    def decode(self, name: str, data: bytes | None) -> dict[str, Any]:
        """Decode ``data`` as a record of ``name``; raises DecodeError with a category."""
        if not data:
            raise DecodeError("undecodable", "empty value")
        writer = self._writer_for(data)
        reader = self._readers[name]
        if isinstance(writer, dict) and writer.get("name") != reader["name"]:
            raise DecodeError(
                "wrong_schema", f"record is a {writer.get('name')}, expected {reader['name']}"
            )
        offset = 10 if data[:2] == SINGLE_OBJECT_MAGIC else 5
        buf = io.BytesIO(data)
        buf.seek(offset)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # fastavro raises many types on corrupt or foreign data
            # str(), not repr(): a UnicodeDecodeError's repr carries the raw field bytes,
            # which may be a recipient address, into the logs and the dead-letter reason.
            raise DecodeError(
                "invalid", f"cannot read as {name}: {type(exc).__name__}: {exc}"[:500]
            ) from None
        if buf.tell() != len(data):
            raise DecodeError(
                "invalid", f"{len(data) - buf.tell()} trailing bytes after the {name} record"
            )
        return record  # type: ignore[return-value]

    def _writer_for(self, data: bytes) -> Any:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise DecodeError("undecodable", "truncated single-object header")
            writer = self._by_fingerprint.get(data[2:10])
            if writer is None:
                raise DecodeError(
                    "unknown_schema", f"unknown schema fingerprint {data[2:10].hex()}"
                )
            return writer
        if data[:1] == CONFLUENT_MAGIC:
            if len(data) < 5:
                raise DecodeError("undecodable", "truncated Confluent header")
            schema_id = struct.unpack(">I", data[1:5])[0]
            writer = self._by_id.get(schema_id)
            if writer is None:
                writer = self._fetch(schema_id)
            return writer
        raise DecodeError(
            "undecodable", f"not Avro: unknown magic byte 0x{data[0]:02x} (expected c3 01 or 00)"
        )

    def _fetch(self, schema_id: int) -> Any:
        if self._registry is None:
            raise DecodeError(
                "unknown_schema", f"schema id {schema_id} but no SCHEMA_REGISTRY_URL configured"
            )
        try:
            schema = self._registry.get_schema(schema_id)
            writer = fastavro.parse_schema(_strip_logical_types(json.loads(schema.schema_str)))
        except Exception as exc:  # registry errors: unknown id, network, bad schema text
            raise DecodeError("unknown_schema", f"schema id {schema_id}: {exc}"[:500]) from None
        self._by_id[schema_id] = writer
        return writer


def schema_fingerprint(raw_schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's canonical form, little-endian, as the spec says."""
    canonical = to_parsing_canonical_form(fastavro.parse_schema(copy.deepcopy(raw_schema)))
    return int(fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")


@cache
def default_codec() -> Codec:
    return Codec()
