"""Confluent Schema Registry: the client from the settings, confluent-kafka's own Avro
serializer and deserializer, and the subjects of the topics (TopicNameStrategy).

Imported only when ``SCHEMA_REGISTRY_URL`` is set: the registry client pulls in an HTTP
stack the single-object path does not need.
"""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    prefix_schema_id_deserializer,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.pipeline.topics import SCHEMA_FILES
from streams.runtime.codec import (
    DecodeError,
    check_consumed,
    compatibility_level,
    invalid,
    load_schema_json,
)
from streams.runtime.config import Settings

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# TopicNameStrategy (subject ``<topic>-value``) stated, not left to the library's default
# (ASSOCIATED, which asks the registry for topic associations first).
_STRATEGY = {"subject.name.strategy.type": "TOPIC"}


def subject_name(topic: str) -> str:
    """The subject of a topic's values under TopicNameStrategy."""
    return f"{topic}-value"


def client_config(settings: Settings) -> dict[str, str]:
    """SchemaRegistryClient configuration. The Python client takes ``basic.auth.user.info``
    alone: its source is implied, and the Java client's ``basic.auth.credentials.source``
    is refused as an unknown property."""
    conf = {"url": settings.schema_registry_url}
    if settings.schema_registry_user:
        user_info = f"{settings.schema_registry_user}:{settings.schema_registry_password}"
        conf["basic.auth.user.info"] = user_info
    return conf


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """The registry's client (confluent-kafka's in-process mock for ``mock://`` URLs)."""
    return SchemaRegistryClient.new_client(client_config(settings))


def _times_as_ms(record: dict[str, Any]) -> dict[str, Any]:
    # fastavro converts timestamp-millis by the writer schema's logicalType, which comes
    # from the registry, so a reader schema without it does not help: the datetimes go back
    # to epoch ms here (exact: integer arithmetic on timedeltas). The records are flat.
    for field, value in record.items():
        if isinstance(value, datetime):
            record[field] = (value - _EPOCH) // _MS
    return record


def _full_name(raw: dict[str, Any]) -> str:
    """A record schema's full name, as schema resolution matches it (``name`` may carry
    the namespace itself)."""
    name, namespace = str(raw.get("name")), raw.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


class RegistrySerde:
    """Records of each schema name through confluent-kafka's Avro serde, one pair per name;
    errors classified as the single-object path does (DecodeError kinds)."""

    def __init__(self, client: SchemaRegistryClient, schemas: dict[str, dict[str, Any]]) -> None:
        self._client = client
        self._record_names = {name: _full_name(raw) for name, raw in schemas.items()}
        self._writer_names: dict[int, str] = {}  # schema id → its record's name
        self._payload = threading.local()  # the payload the deserializer read, per thread
        self._schema_strs = {name: json.dumps(raw) for name, raw in schemas.items()}
        # One serializer per (name, topic): a serializer keeps a single schema id, and the
        # same schema may have another id under another topic's subject.
        self._serializers: dict[tuple[str, str], AvroSerializer] = {}
        # Our current schema is the reader: writer → reader resolution as fastavro does it.
        self._deserializers = {
            name: AvroDeserializer(
                client, schema_str, conf={**_STRATEGY, "schema.id.deserializer": self._read_header}
            )
            for name, schema_str in self._schema_strs.items()
        }

    def encode(self, name: str, record: dict[str, Any], topic: str) -> bytes:
        """Registers the schema under ``<topic>-value`` on first use (auto-registration)."""
        serializer = self._serializers.get((name, topic))
        if serializer is None:
            serializer = AvroSerializer(self._client, self._schema_strs[name], conf=_STRATEGY)
            self._serializers[name, topic] = serializer
        data = serializer(record, SerializationContext(topic, MessageField.VALUE))
        assert data is not None  # a record is never None here
        return data

    def decode(self, name: str, data: bytes) -> dict[str, Any]:
        """``data`` in Confluent wire format (``00`` + id, checked by the caller)."""
        schema_id = int.from_bytes(data[1:5], "big")
        expected = self._record_names[name]
        writer = self._writer_name(schema_id)
        if writer != expected:
            raise DecodeError("wrong_schema", f"record is a {writer}, expected {expected}")
        try:
            # No SerializationContext: the writer schema comes from the id, and the subject
            # would only select data-contract rules and migrations, which the topics do not use.
            record = self._deserializers[name](data, None)
        except Exception as exc:  # fastavro and the serde raise many types on corrupt data
            raise invalid(name, exc) from None
        check_consumed(name, self._payload.buf, len(data))
        return _times_as_ms(record)  # type: ignore[arg-type]

    def _writer_name(self, schema_id: int) -> str:
        name = self._writer_names.get(schema_id)
        if name is None:
            try:
                schema = self._client.get_schema(schema_id)
                name = _full_name(json.loads(schema.schema_str))
            except Exception as exc:  # unknown id, registry unreachable, bad schema text
                raise DecodeError("unknown_schema", f"schema id {schema_id}: {exc}"[:500]) from None
            self._writer_names[schema_id] = name
        return name

    def _read_header(self, data: bytes, ctx: Any, schema_id: Any) -> io.BytesIO:
        buf = prefix_schema_id_deserializer(data, ctx, schema_id)
        self._payload.buf = buf
        return buf


def register_topics(settings: Settings, client: SchemaRegistryClient) -> list[str]:
    """For each Avro topic: set its subject's compatibility (first, so that the registration
    is checked against it), then register the current schema. Returns one line per subject."""
    done = []
    for name in SCHEMA_FILES:
        subject = subject_name(settings.topic(name))
        level = compatibility_level(name)
        client.set_compatibility(subject_name=subject, level=level)
        schema = Schema(json.dumps(load_schema_json(name)), "AVRO")
        schema_id = client.register_schema(subject, schema)
        done.append(f"{subject}: schema id {schema_id}, compatibility {level}")
    return done
