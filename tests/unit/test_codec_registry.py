"""The codec with a schema registry: confluent-kafka's serde against its mock registry
(``mock://``), TopicNameStrategy subjects, credentials, both wire formats."""

import base64
import io
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from factories import event

from streams.adapters.base import Bad, Event
from streams.pipeline.topics import SCHEMA_FILES
from streams.runtime.codec import (
    Codec,
    DecodeError,
    compatibility_level,
    load_schema_json,
    schema_history,
)
from streams.runtime.config import ConfigError, Settings
from streams.runtime.registry import client_config, register_topics, registry_client
from streams.runtime.vendor_records import to_record
from streams.tools.stack import Stack, StackError

EVENT = event(
    "M1", "relayed", event_id="e1", recipient="someone@example.org", validity_seconds=3600
)
STATUS = {
    "event_id": "e2",
    "event_time": 1_767_225_600_123,
    "message_id": "M1",
    "delivery_id": "D1",
    "recipient": "jane@example.com",
    "status": "failed",
    "failure_type": "soft",
    "failure_reason": "mailbox_full",
    "bounce_class": 10,
    "rule": "r1",
    "attempts": 2,
    "next_attempt_time": 1_767_225_900_456,  # a timestamp inside a union
    "version": 3,
}
# confluent-kafka does not export its mock client's class; new_client builds one for mock://.
MockSchemaRegistryClient = type(SchemaRegistryClient.new_client({"url": "mock://codec-test"}))


def _settings(**env: str) -> Settings:
    return Settings.from_env({"SCHEMA_REGISTRY_URL": "mock://codec-test", **env})


@pytest.fixture
def registry():
    return SchemaRegistryClient.new_client({"url": "mock://codec-test"})


def test_subjects_follow_the_topic_name_strategy_and_prefixes_do_not_collide(registry):
    codec = Codec(registry)
    one = codec.encode("send", EVENT, "tenant-a.send")
    two = codec.encode("send", EVENT, "tenant-b.send")
    dlq = codec.encode("status", STATUS, "tenant-a.status")
    assert sorted(registry.get_subjects()) == [
        "tenant-a.send-value",
        "tenant-a.status-value",
        "tenant-b.send-value",
    ]
    for data, subject in ((one, "tenant-a.send-value"), (two, "tenant-b.send-value")):
        assert data[:1] == b"\x00"
        schema_id = struct.unpack(">I", data[1:5])[0]
        assert registry.get_latest_version(subject).schema_id == schema_id
    assert codec.decode("send", one) == codec.decode("send", two)
    assert codec.decode("status", dlq)["version"] == 3


def test_a_registry_round_trip_keeps_times_as_epoch_ms(registry):
    codec = Codec(registry)
    status = codec.decode("status", codec.encode("status", STATUS, "mta.status"))
    assert status == STATUS
    assert type(status["event_time"]) is int
    assert type(status["next_attempt_time"]) is int
    send = codec.decode("send", codec.encode("send", EVENT, "mta.send"))
    assert send["event_time"] == EVENT["event_time"]
    assert type(send["event_time"]) is int
    assert send["sending_ip"] is None  # optional fields absent from the dict read as None


def test_both_wire_formats_are_decoded_whatever_the_configuration(registry):
    with_registry, without = Codec(registry), Codec()
    confluent = with_registry.encode("send", EVENT, "mta.send")
    single = without.encode("send", EVENT)
    assert single[:2] == b"\xc3\x01"
    assert with_registry.decode("send", single) == without.decode("send", single)
    assert with_registry.decode("send", confluent) == without.decode("send", single)
    with pytest.raises(DecodeError) as err:
        without.decode("send", confluent)
    assert err.value.kind == "unknown_schema"


def test_a_registry_needs_the_topic_to_encode(registry):
    with pytest.raises(ValueError, match="topic"):
        Codec(registry).encode("send", EVENT)
    # Without a registry the topic is not needed (and not used).
    assert Codec().encode("send", EVENT) == Codec().encode("send", EVENT, "mta.send")


def test_registry_records_keep_the_decode_error_kinds(registry):
    codec = Codec(registry)
    data = codec.encode("send", EVENT, "mta.send")
    cases = {
        "trailing": (data + b"\x00\x00", "invalid"),
        "truncated": (data[:-3], "invalid"),
        "header only": (data[:5], "invalid"),
        "short header": (data[:3], "undecodable"),
        "unknown id": (b"\x00" + struct.pack(">I", 4242) + data[5:], "unknown_schema"),
    }
    for label, (bad, kind) in cases.items():
        with pytest.raises(DecodeError) as err:
            codec.decode("send", bad)
        assert err.value.kind == kind, label
    with pytest.raises(DecodeError) as err:
        codec.decode("bounce", data)
    assert err.value.kind == "wrong_schema"
    assert "SendEvent" in err.value.reason
    missing = dict(EVENT)
    del missing["message_id"]
    with pytest.raises(ValueError):
        codec.encode("send", missing, "mta.send")


def test_credentials_are_their_own_settings_and_reach_the_client():
    settings = _settings(SCHEMA_REGISTRY_USER="api-key", SCHEMA_REGISTRY_PASSWORD="s3cr:et")
    assert client_config(settings) == {
        "url": "mock://codec-test",
        "basic.auth.user.info": "api-key:s3cr:et",
    }
    client = registry_client(settings)
    assert isinstance(client, MockSchemaRegistryClient)
    assert client._rest_client.auth == ("api-key", "s3cr:et")
    assert client_config(_settings()) == {"url": "mock://codec-test"}
    assert isinstance(Codec.from_settings(settings).encode("send", EVENT, "mta.send"), bytes)
    assert Codec.from_settings(Settings.from_env({})).encode("send", EVENT)[:2] == b"\xc3\x01"


def test_registry_secrets_are_masked_and_checked():
    rows = {
        env: value
        for env, value, _ in _settings(
            SCHEMA_REGISTRY_USER="api-key", SCHEMA_REGISTRY_PASSWORD="s3cret"
        ).describe()
    }
    assert rows["SCHEMA_REGISTRY_USER"] == "api-key"
    assert rows["SCHEMA_REGISTRY_PASSWORD"] == "****"
    in_url = Settings.from_env({"SCHEMA_REGISTRY_URL": "https://key:pw-in-url@sr:8081"})
    assert "pw-in-url" not in str(in_url.describe())
    with pytest.raises(ConfigError, match="together"):
        _settings(SCHEMA_REGISTRY_USER="api-key")
    with pytest.raises(ConfigError, match="not both") as err:
        Settings.from_env(
            {
                "SCHEMA_REGISTRY_URL": "https://key:pw-in-url@sr:8081",
                "SCHEMA_REGISTRY_USER": "api-key",
                "SCHEMA_REGISTRY_PASSWORD": "s3cret",
            }
        )
    assert "s3cret" not in str(err.value) and "pw-in-url" not in str(err.value)


class _RecordingRegistry(MockSchemaRegistryClient):
    """The mock registry keeps no compatibility levels: these are recorded here."""

    def __init__(self, conf):
        super().__init__(conf)
        self.levels: dict[str, str] = {}

    def set_compatibility(self, subject_name=None, level=None):
        self.levels[subject_name] = level
        return level


def test_the_topic_job_registers_every_schema_and_sets_its_compatibility():
    settings = _settings(MTA_TOPIC_PREFIX="acme")
    client = _RecordingRegistry({"url": "mock://codec-test"})
    lines = register_topics(settings, client)
    subjects = {f"acme.{name}-value": name for name in SCHEMA_FILES}
    assert sorted(client.get_subjects()) == sorted(subjects)
    assert client.levels == {s: compatibility_level(n) for s, n in subjects.items()}
    assert client.levels["acme.send-value"] == "BACKWARD"
    assert client.levels["acme.operator-value"] == "BACKWARD"
    assert client.levels["acme.status-value"] == "FORWARD"
    assert client.levels["acme.dlq-value"] == "FORWARD"
    assert len(lines) == len(SCHEMA_FILES)
    assert "acme.send-value: schema id" in lines[0]


def test_the_topic_job_reports_a_registry_failure_without_its_secrets():
    # Nothing listens on port 9: the registration fails, and says so without the password.
    settings = Settings.from_env({"SCHEMA_REGISTRY_URL": "http://key:pw-in-url@127.0.0.1:9"})
    with pytest.raises(StackError) as err:
        Stack(settings).register_schemas()
    assert "schema registry http://key:****@127.0.0.1:9" in str(err.value)
    assert "pw-in-url" not in str(err.value)


class _FakeRegistry(BaseHTTPRequestHandler):
    """Just the two calls of the topic job, recorded: PUT /config/<subject> and
    POST /subjects/<subject>/versions."""

    calls: list[tuple[str, str, str | None, dict]] = []

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        self.calls.append((self.command, unquote(self.path), auth, body))
        return body

    def do_PUT(self):
        self._answer(self._record())

    def do_POST(self):
        self._record()
        self._answer({"id": len(self.calls)})

    def log_message(self, *args):
        pass


def test_the_topic_job_speaks_to_the_registry_with_its_credentials():
    _FakeRegistry.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings.from_env(
            {
                "SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{server.server_port}",
                "SCHEMA_REGISTRY_USER": "api-key",
                "SCHEMA_REGISTRY_PASSWORD": "s3cret",
                "MTA_TOPIC_PREFIX": "acme",
            }
        )
        lines = Stack(settings).register_schemas()
    finally:
        server.shutdown()
        server.server_close()
    basic = "Basic " + base64.b64encode(b"api-key:s3cret").decode()
    calls = _FakeRegistry.calls
    assert {auth for _, _, auth, _ in calls} == {basic}
    assert calls[0][:2] == ("PUT", "/config/acme.send-value")
    assert calls[0][3] == {"compatibility": "BACKWARD"}
    assert calls[1][:2] == ("POST", "/subjects/acme.send-value/versions?normalize=False")
    assert json.loads(calls[1][3]["schema"]) == load_schema_json("send")
    puts = {path: body["compatibility"] for method, path, _, body in calls if method == "PUT"}
    assert puts["/config/acme.status-value"] == "FORWARD"
    assert len(puts) == len(lines) == len(SCHEMA_FILES)
    assert not any("s3cret" in line for line in lines)


def test_vendor_records_and_their_dead_letters_use_their_topics_subjects(registry):
    codec = Codec(registry)
    names = {f: f"acme.{f}" for f in ("send", "bounce", "retry", "operator", "dlq")}
    sent = to_record(codec, Event("send", dict(EVENT)), "file.log", 1, names)
    bad = to_record(codec, Bad("garbage", "not a record"), "file.log", 2, names)
    unfit = to_record(
        codec, Event("send", {**EVENT, "validity_seconds": "x"}), "file.log", 3, names
    )
    assert sorted(registry.get_subjects()) == ["acme.dlq-value", "acme.send-value"]
    assert codec.decode("send", sent.value)["message_id"] == "M1"
    assert codec.decode("dlq", bad.value)["error"] == "not a record"
    assert codec.decode("dlq", unfit.value)["error_kind"] == "invalid"
    with pytest.raises(ValueError, match="topic"):  # no dead-letter topic name: refused
        to_record(codec, Bad("garbage", "not a record"), "file.log", 2, {"send": "acme.send"})


def _confluent(registry, subject: str, schema: dict, record: dict) -> bytes:
    schema_id = registry.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def test_records_of_an_older_registered_version_resolve_to_the_current_schema(registry):
    v1 = schema_history("bounce_event")[0]
    assert {"origin", "vendor_class"} <= {f["name"] for f in load_schema_json("bounce")["fields"]}
    assert "origin" not in {f["name"] for f in v1["fields"]}
    # The full name written in "name" alone is the same record for schema resolution.
    v1 = {k: v for k, v in v1.items() if k != "namespace"} | {
        "name": f"{v1['namespace']}.{v1['name']}"
    }
    bounce = event("M1", "sync", event_id="e3", recipient="someone@example.org")
    data = _confluent(registry, "old-producer.bounce-value", v1, bounce)
    decoded = Codec(registry).decode("bounce", data)
    assert decoded["origin"] is None and decoded["vendor_class"] is None
    assert decoded["event_time"] == bounce["event_time"]
