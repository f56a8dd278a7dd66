"""Avro codec: the package's schemas, two wire formats, writer → reader resolution.

- Avro single-object encoding (``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of
  the writer schema's canonical form), used when no schema registry is configured.
- Confluent wire format (``00`` + 4-byte big-endian schema id), used when
  ``SCHEMA_REGISTRY_URL`` is set (``mock://...`` gives confluent-kafka's in-process mock):
  confluent-kafka's own Avro serializer and deserializer (streams/runtime/registry.py),
  subjects named by TopicNameStrategy (``<full topic name>-value``).

The decoder accepts both whatever the configuration, and resolves the writer schema to the
current reader schema, so producers on an older schema version keep working (every version
in ``schemas/history/`` is known to the single-object decoder). Decoded
``timestamp-millis`` fields stay integers (epoch ms): the domain code works in ms and
converting to ``datetime`` and back would cost time on the hot path.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.pipeline.topics import INPUT_TOPICS, SCHEMA_FILES

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from streams.runtime.config import Settings
    from streams.runtime.registry import RegistrySerde

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_VERSION_FILE = re.compile(r"v(\d+)\.avsc")


class DecodeError(ValueError):
    """A record could not be decoded; ``kind`` is the dead-letter category."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def schema_dir() -> Traversable:
    """``MTA_SCHEMA_DIR``, or the schemas shipped in the package (``streams.schemas``, the
    repository's top-level ``schemas/`` folder)."""
    configured = os.environ.get("MTA_SCHEMA_DIR")
    return Path(configured) if configured else files("streams.schemas")


def load_schema_json(name: str) -> dict[str, Any]:
    """The current schema of the records of ``name`` (a logical topic name)."""
    path = schema_dir() / f"{SCHEMA_FILES[name]}.avsc"
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Avro schema {path} not found; set MTA_SCHEMA_DIR to the schemas/ folder"
        ) from None


def schema_history(stem: str) -> list[dict[str, Any]]:
    """Every released version of schema ``stem`` (``history/<stem>/v<N>.avsc``), oldest
    first; the last one is the current schema."""
    folder = schema_dir() / "history" / stem
    if not folder.is_dir():
        return []
    versions = {
        int(match.group(1)): entry
        for entry in folder.iterdir()
        if (match := _VERSION_FILE.fullmatch(entry.name))
    }
    return [json.loads(versions[v].read_text()) for v in sorted(versions)]


def compatibility_level(name: str) -> str:
    """The registry compatibility of a topic's subject. Inputs: BACKWARD (the workers, their
    consumers, upgrade first and read what older producers wrote). Outputs: FORWARD (the
    workers upgrade first and their records stay readable by consumers on older schemas)."""
    return "BACKWARD" if name in INPUT_TOPICS else "FORWARD"


def _strip_logical_types(node: Any) -> Any:
    """Copy of a schema without logicalType annotations, so fastavro reads plain longs."""
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


class Codec:
    """Encodes and decodes the project's records; one instance per process is enough."""

    def __init__(self, registry: SchemaRegistryClient | None = None) -> None:
        self._writers: dict[str, Any] = {}  # name → parsed schema (with logical types)
        self._readers: dict[str, Any] = {}  # name → parsed reader schema (plain longs)
        self._headers: dict[str, bytes] = {}  # name → single-object header for encoding
        self._by_fingerprint: dict[bytes, Any] = {}  # 8 bytes → parsed writer (plain longs)
        raw_schemas = {name: load_schema_json(name) for name in SCHEMA_FILES}
        for name, raw in raw_schemas.items():
            for old in schema_history(SCHEMA_FILES[name]):
                self.register_history(old)
            # The current version last: its writer is then the reader object itself, and
            # fastavro skips schema resolution for identical schemas (a third of a decode).
            self._readers[name] = self.register_history(raw)
            self._writers[name] = fastavro.parse_schema(copy.deepcopy(raw))
            self._headers[name] = SINGLE_OBJECT_MAGIC + schema_fingerprint(raw)
        self._registry: RegistrySerde | None = None
        if registry is not None:
            from streams.runtime.registry import RegistrySerde

            self._registry = RegistrySerde(registry, raw_schemas)

    @classmethod
    def from_settings(cls, settings: Settings) -> Codec:
        """Single-object encoding without ``SCHEMA_REGISTRY_URL``; the registry's otherwise."""
        if not settings.schema_registry_url:
            return cls()
        from streams.runtime.registry import registry_client

        return cls(registry_client(settings))

    def register_history(self, raw_schema: dict[str, Any]) -> Any:
        """Accept records written with this version of a schema (single-object format);
        returns it parsed, with plain longs."""
        parsed = fastavro.parse_schema(_strip_logical_types(raw_schema))
        self._by_fingerprint[schema_fingerprint(raw_schema)] = parsed
        return parsed

    def header(self, name: str) -> bytes:
        """Single-object header of records of ``name`` in their current schema."""
        return self._headers[name]

    def encode(self, name: str, record: dict[str, Any], topic: str | None = None) -> bytes:
        """``record`` as a ``name`` record. With a registry, ``topic`` (the full Kafka topic
        name) is required: it names the subject, ``<topic>-value``."""
        if self._registry is not None:
            if topic is None:
                raise ValueError(f"encoding a {name} record for a schema registry needs its topic")
            return self._registry.encode(name, record, topic)
        buf = io.BytesIO()
        buf.write(self._headers[name])
        fastavro.schemaless_writer(buf, self._writers[name], record)
        return buf.getvalue()

    def decode(self, name: str, data: bytes | None) -> dict[str, Any]:
        """Decode ``data`` as a record of ``name``; raises DecodeError with a category."""
        if not data:
            raise DecodeError("undecodable", "empty value")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            return self._decode_single_object(name, data)
        if data[:1] == CONFLUENT_MAGIC:
            if len(data) < 5:
                raise DecodeError("undecodable", "truncated Confluent header")
            if self._registry is None:
                schema_id = int.from_bytes(data[1:5], "big")
                raise DecodeError(
                    "unknown_schema",
                    f"schema id {schema_id} but no SCHEMA_REGISTRY_URL configured",
                )
            return self._registry.decode(name, data)
        raise DecodeError(
            "undecodable", f"not Avro: unknown magic byte 0x{data[0]:02x} (expected c3 01 or 00)"
        )

    def _decode_single_object(self, name: str, data: bytes) -> dict[str, Any]:
        if len(data) < 10:
            raise DecodeError("undecodable", "truncated single-object header")
        writer = self._by_fingerprint.get(data[2:10])
        if writer is None:
            raise DecodeError("unknown_schema", f"unknown schema fingerprint {data[2:10].hex()}")
        reader = self._readers[name]
        if writer["name"] != reader["name"]:
            raise DecodeError(
                "wrong_schema", f"record is a {writer['name']}, expected {reader['name']}"
            )
        buf = io.BytesIO(data)
        buf.seek(10)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # fastavro raises many types on corrupt or foreign data
            raise invalid(name, exc) from None
        check_consumed(name, buf, len(data))
        return record  # type: ignore[return-value]


def invalid(name: str, exc: Exception) -> DecodeError:
    # str(), not repr(): a UnicodeDecodeError's repr carries the raw field bytes, which may
    # be a recipient address, into the logs and the dead-letter reason.
    return DecodeError("invalid", f"cannot read as {name}: {type(exc).__name__}: {exc}"[:500])


def check_consumed(name: str, buf: io.BytesIO, size: int) -> None:
    """Bytes left after a whole record are a framing error, not a record."""
    if buf.tell() != size:
        raise DecodeError("invalid", f"{size - buf.tell()} trailing bytes after the {name} record")


def schema_fingerprint(raw_schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's canonical form, little-endian, as the spec says."""
    canonical = to_parsing_canonical_form(fastavro.parse_schema(copy.deepcopy(raw_schema)))
    return int(fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")


@cache
def default_codec() -> Codec:
    return Codec()
