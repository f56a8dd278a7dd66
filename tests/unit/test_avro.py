import copy
import struct

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from factories import event

from streams.runtime.codec import Codec, DecodeError, load_schema_json, schema_fingerprint

EVENT = event(
    "M1", "relayed", event_id="e1", recipient="someone@example.org", validity_seconds=3600
)


def test_single_object_round_trip_keeps_times_as_ms():
    codec = Codec()
    data = codec.encode("send", EVENT)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == schema_fingerprint(load_schema_json("send"))
    decoded = codec.decode("send", data)
    assert decoded["event_time"] == EVENT["event_time"]
    assert decoded["validity_seconds"] == 3600
    assert decoded["sending_ip"] is None


def test_confluent_wire_format_with_the_mock_registry():
    registry = SchemaRegistryClient.new_client({"url": "mock://test-avro"})
    codec = Codec(registry)
    data = codec.encode("send", EVENT, "mta.send")
    assert data[:1] == b"\x00"
    schema_id = struct.unpack(">I", data[1:5])[0]
    assert registry.get_subjects() == ["mta.send-value"]
    assert codec.decode("send", data)["message_id"] == "M1"
    # A decoder without a registry still reads single-object records, and says why not these.
    with pytest.raises(DecodeError) as err:
        Codec().decode("send", data)
    assert err.value.kind == "unknown_schema"
    assert str(schema_id) in err.value.reason


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "undecodable"),
        (b"\xff\xfe garbage", "undecodable"),
        (b"\xc3\x01\x00\x01", "undecodable"),
        (b"\xc3\x01" + b"\x11" * 8 + b"payload", "unknown_schema"),
        (b"\x00\x00\x00", "undecodable"),
    ],
)
def test_bad_bytes_are_classified(data, kind):
    with pytest.raises(DecodeError) as err:
        Codec().decode("send", data)
    assert err.value.kind == kind


def test_truncated_and_trailing_bytes_are_invalid():
    codec = Codec()
    data = codec.encode("send", EVENT)
    with pytest.raises(DecodeError) as err:
        codec.decode("send", data[:-3])
    assert err.value.kind == "invalid"
    with pytest.raises(DecodeError) as err:
        codec.decode("send", data + b"\x00\x00")
    assert "trailing" in err.value.reason


def test_wrong_schema_is_named():
    codec = Codec()
    with pytest.raises(DecodeError) as err:
        codec.decode("bounce", codec.encode("send", EVENT))
    assert err.value.kind == "wrong_schema"
    assert "SendEvent" in err.value.reason


def test_missing_required_field_is_refused_at_encoding():
    event = dict(EVENT)
    del event["message_id"]
    with pytest.raises(ValueError):
        Codec().encode("send", event)


def test_records_from_an_older_schema_version_are_resolved():
    old = copy.deepcopy(load_schema_json("send"))
    old["fields"] = [f for f in old["fields"] if f["name"] != "campaign_id"]
    import io

    import fastavro

    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + schema_fingerprint(old))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), EVENT)
    codec = Codec()
    with pytest.raises(DecodeError):
        codec.decode("send", buf.getvalue())
    codec.register_history(old)
    assert codec.decode("send", buf.getvalue())["campaign_id"] is None
