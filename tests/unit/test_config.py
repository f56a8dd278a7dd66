import re
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streams.runtime.config import (
    ENV_VARS,
    KNOWN_VARS,
    OUTSIDE_VARS,
    ConfigError,
    Settings,
    mask_secrets,
    unknown_variables,
)

ROOT = Path(__file__).resolve().parents[2]


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


# --- secrets, log level, unknown variables ----------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:s3cret@host:6379/0", "redis://u:****@host:6379/0"),
        ("redis://:s3cret@host", "redis://:****@host"),
        ("redis://tok3n@host", "redis://****@host"),  # a lone user info can be a token
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://u:@host", "redis://u:@host"),
        ("redis://u:p@ss/w?rd#x@host:1/0", "redis://u:****@host:1/0"),  # unencoded
        (
            "rediss://h/0?ssl_ca_certs=/ca.pem&password=pw&Api-Key=k&token=&x=1#top",
            "rediss://h/0?ssl_ca_certs=/ca.pem&password=****&Api-Key=****&token=&x=1#top",
        ),
        (
            "http://a:pa@h1:8081,https://b:pb@h2/x?access_token=t",
            "http://a:****@h1:8081,https://b:****@h2/x?access_token=****",
        ),
        ("127.0.0.1:19092", "127.0.0.1:19092"),
        ("", ""),
    ],
)
def test_secrets_in_urls_are_masked(url, shown):
    assert mask_secrets(url) == shown


def test_describe_masks_urls_and_secret_settings():
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://u:s3cret@host:6379/0",
            "SCHEMA_REGISTRY_URL": "https://key:registry-pw@registry:8081",
            "MTA_HTTP_TOKEN": "bearer-t0ken",
        }
    )
    rows = {env: value for env, value, _ in s.describe()}
    assert rows["REDIS_URL"] == "redis://u:****@host:6379/0"
    assert rows["SCHEMA_REGISTRY_URL"] == "https://key:****@registry:8081"
    assert rows["MTA_HTTP_TOKEN"] == "****"
    assert s.redis_url == "redis://u:s3cret@host:6379/0"  # masked for display only
    assert dict((env, value) for env, value, _ in s.masked())["MTA_PARTITIONS"] == 4


_USER_INFO = st.text(min_size=1, max_size=20)


@given(user=_USER_INFO, password=st.text(min_size=3, max_size=20))
def test_no_url_password_reaches_describe(user, password):
    """Whatever the user and password, once percent-encoded into the URL, neither the
    password nor its encoded form appears in what ``config`` would print."""
    forms = {password, quote(password, safe="")}

    def shown(pw: str) -> str:
        def url(scheme: str) -> str:
            return f"{scheme}://{quote(user, safe='')}:{quote(pw, safe='')}@127.0.0.1:6379/0"

        s = Settings.from_env({"REDIS_URL": url("redis"), "SCHEMA_REGISTRY_URL": url("https")})
        return repr(s.describe())

    assume(not any(form in shown("") for form in forms))
    assert not any(form in shown(password) for form in forms)


@given(
    user=st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":,"), min_size=1
    ),
    password=st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=","), min_size=3
    ),
)
def test_unencoded_passwords_are_masked_whole(user, password):
    """A password typed without percent-encoding (``@``, ``/``, ``?``, ``#`` in it) is
    still masked whole."""
    url = f"redis://{user}:{password}@127.0.0.1:6379/0"
    assert mask_secrets(url) == f"redis://{user}:****@127.0.0.1:6379/0"


def test_a_bad_value_is_reported_without_its_secret():
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"MTA_BOOTSTRAP_SERVERS": "sasl://user:hunter22@broker"})
    assert "hunter22" not in str(err.value)
    assert "user:****@broker" in str(err.value)


@pytest.mark.parametrize("raw", ["INFO", "Info", "info", " DEBUG ", "Warning", "ERROR"])
def test_the_log_level_ignores_case(raw):
    assert Settings.from_env({"MTA_LOG_LEVEL": raw}).log_level == raw.strip().lower()


def test_an_unknown_log_level_is_refused():
    with pytest.raises(ConfigError, match=r"MTA_LOG_LEVEL='loud'.*any case"):
        Settings.from_env({"MTA_LOG_LEVEL": "loud"})


def test_unknown_mta_variables_are_named_with_a_suggestion():
    lines = unknown_variables(
        {
            "MTA_PARTITON": "8",
            "mta_log_level": "info",
            "MTA_REDIS_URL": "redis://h",
            "MTA_XYZZY": "1",
            "MTA_PARTITIONS": "8",
            "MTA_SCHEMA_DIR": "/s",
            "PATH": "/bin",
        }
    )
    assert lines == [
        "MTA_PARTITON is not a known variable and is ignored (did you mean MTA_PARTITIONS?)",
        "MTA_REDIS_URL is not a known variable and is ignored (did you mean REDIS_URL?)",
        "MTA_XYZZY is not a known variable and is ignored",
        "mta_log_level is not a known variable and is ignored (did you mean MTA_LOG_LEVEL?)",
    ]


def test_library_use_of_settings_warns_about_nothing(capsys):
    assert Settings.from_env({"MTA_PARTITON": "8"}).partitions == 4
    assert capsys.readouterr() == ("", "")


def test_every_mta_variable_the_code_reads_is_known():
    """A variable read with os.environ must join OUTSIDE_VARS, or the command line would
    warn that it is unknown."""
    name = re.compile(r"\bMTA_[A-Z0-9_]*[A-Z0-9]\b")
    # These two spell unknown names on purpose, to test the warning.
    typos = {Path(__file__).resolve(), ROOT / "tests" / "unit" / "test_cli_new_user.py"}
    files = [p for d in ("streams", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    files += [ROOT / "Makefile", ROOT / ".ci" / "run", ROOT / "docker" / "Dockerfile"]
    found = {
        (m, str(p.relative_to(ROOT)))
        for p in files
        if p.exists() and p not in typos
        for m in name.findall(p.read_text(errors="replace"))
    }
    assert sorted(f for f in found if f[0] not in KNOWN_VARS) == []


def test_the_variables_outside_the_settings_object_are_documented():
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Outside the settings object", 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"^\| `(MTA_[A-Z0-9_]+)`", section, re.MULTILINE))
    assert documented == OUTSIDE_VARS
    assert not OUTSIDE_VARS & ENV_VARS
