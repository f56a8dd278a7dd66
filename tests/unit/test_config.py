import pytest

from streams.config import ENV_VARS, ConfigError, Settings


def test_defaults_target_the_embedded_stack():
    s = Settings.from_env({})
    assert s.bootstrap_servers == "127.0.0.1:19092"
    assert s.topic("status") == "mta.status"
    assert s.store == "memory://"


def test_values_are_parsed():
    s = Settings.from_env({"MTA_PARTITIONS": "8", "MTA_REDIS_VIEWS": "no", "MTA_TOPIC_PREFIX": "x"})
    assert (s.partitions, s.redis_views, s.topic("kpi")) == (8, False, "x.kpi")


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
