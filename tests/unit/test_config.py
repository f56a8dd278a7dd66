import pytest

from streams.runtime.config import ENV_VARS, ConfigError, Settings


def test_defaults_target_the_embedded_stack():
    s = Settings.from_env({})
    assert s.bootstrap_servers == "127.0.0.1:19092"
    assert s.topic("status") == "mta.status"
    assert s.store == "memory://"


def test_values_are_parsed():
    s = Settings.from_env(
        {
            "MTA_PARTITIONS": "8",
            "MTA_REDIS_VIEWS": "no",
            "MTA_TOPIC_PREFIX": "x",
            "MTA_LINGER_MS": "0",
        }
    )
    assert (s.partitions, s.redis_views, s.topic("kpi"), s.linger_ms) == (8, False, "x.kpi", 0)


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("MTA_PARTITIONS", "zero", "MTA_PARTITIONS"),
        ("MTA_PARTITIONS", "0", "between 1"),
        ("MTA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
        ("MTA_STORE", "redis://", "one of"),
        ("MTA_TOPIC_PREFIX", "a b", "letters"),
        ("MTA_BOUNCE_RULES_FILE", "/no/such/file.toml", "does not exist"),
        ("MTA_SESSION_TIMEOUT_S", "-1", "between"),
        ("MTA_COMMIT_INTERVAL_S", "0", "between"),
        ("MTA_LINGER_MS", "-5", "between"),
    ],
)
def test_bad_values_fail_naming_the_variable(var, value, words):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({var: value})
    assert var in str(err.value)
    assert words in str(err.value)


def test_sasl_needs_a_mechanism():
    with pytest.raises(ConfigError, match="MTA_SASL_MECHANISM"):
        Settings.from_env({"MTA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})


def test_security_settings_reach_the_client_config():
    s = Settings.from_env(
        {
            "MTA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "MTA_SASL_MECHANISM": "SCRAM-SHA-256",
            "MTA_SASL_USERNAME": "u",
            "MTA_SASL_PASSWORD": "p",
        }
    )
    conf = s.kafka_client_config()
    assert conf["sasl.mechanism"] == "SCRAM-SHA-256"
    assert conf["sasl.username"] == "u"
    assert ("MTA_SASL_PASSWORD", "****", "Kafka SASL password") in s.describe()


def test_every_field_has_a_variable():
    assert len(ENV_VARS) == len(Settings.from_env({}).describe())


def test_domain_thresholds_reach_the_pipeline_config():
    default = Settings.from_env({}).pipeline_config()
    assert default.quarantine.soft_threshold == 5
    assert default.quarantine.horizon_s == 15 * 86_400  # the policy's own default span
    assert default.validity.max_validity_s == 302_400
    assert default.message_retention_ms == 7 * 86_400_000
    c = Settings.from_env(
        {
            "MTA_QUARANTINE_SOFT_THRESHOLD": "3",
            "MTA_QUARANTINE_SOFT_SPACING_S": "3600",
            "MTA_VALIDITY_MAX_S": "7200",
            "MTA_MESSAGE_RETENTION_S": "60",
            "MTA_ADDRESS_RETENTION_S": "120",
        }
    ).pipeline_config()
    assert (c.quarantine.soft_threshold, c.quarantine.soft_spacing_s) == (3, 3600)
    assert c.quarantine.horizon_s == 10 * 86_400 + 3 * 3600
    assert c.validity.effective_ms(86_400) == 7_200_000
    assert (c.message_retention_ms, c.address_retention_ms) == (60_000, 120_000)


def test_replay_uses_the_configured_thresholds(tmp_path):
    import io
    import json

    from streams.tools import replay

    lines = [
        {"family": "send", "kind": "relayed", "event_time": "2026-01-01T00:00:00Z"},
        {
            "family": "bounce",
            "kind": "sync",
            "event_time": "2026-01-01T00:10:00Z",
            "smtp_code": 452,
            "enhanced_status": "4.2.2",
            "diagnostic": "452 4.2.2 mailbox full",
        },
    ]
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "event_id": f"e{i}",
                    "delivery_id": "D",
                    "message_id": "M",
                    "recipient": "a@example.org",
                    **line,
                }
            )
            + "\n"
            for i, line in enumerate(lines)
        )
    )

    def address_state(env):
        out = io.StringIO()
        assert replay.run(str(path), out, io.StringIO(), Settings.from_env(env)) == 0
        rows = [json.loads(r) for r in out.getvalue().splitlines()]
        return next(r["state"] for r in rows if r["type"] == "address")

    assert address_state({}) == "with_errors"
    assert address_state({"MTA_QUARANTINE_SOFT_THRESHOLD": "1"}) == "quarantined"
