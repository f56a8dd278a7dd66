"""Security settings from configuration only: Kafka SASL and TLS, Redis ACL users and TLS,
no recipient address in the logs.

Kafka SASL against Tansu (``--authentication``), found by trying:
- SCRAM-SHA-256 and SCRAM-SHA-512 are offered: the clients reach the SCRAM exchange and the
  broker answers it (``unknown-user``).
- PLAIN is not offered: the handshake ends with ``NoSharedMechanism`` on the broker side.
- A successful SCRAM login could not be shown here: Tansu creates users through
  AlterUserScramCredentials, which itself needs an authenticated connection, and its memory
  storage is empty at start, so no first user can exist (its S3/Postgres engines could hold
  users across a restart; neither is available on this machine). So the tests below show
  that the producer, the OutputConsumer and a Faust worker all speak SCRAM from MTA_* settings
  alone and that a rejected login fails at once with a clear KafkaAuthError. The successful
  path is for the docker/ stack (Apache Kafka).
- TLS (MTA_SECURITY_PROTOCOL=SSL, MTA_SSL_CAFILE): Tansu here has no TLS listener, so a
  TLS-terminating proxy (streams/testing/proxy.py) with a certificate from a private CA
  stands in front of it; every client speaks TLS to it and verifies it with that CA. SASL
  over TLS (SASL_SSL) combines the two paths above and is not run here.
- Redis: an ACL user and TLS with a private CA, both from REDIS_URL alone.
"""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import redis
from factories import event

from streams.runtime.codec import Codec
from streams.runtime.config import KafkaAuthError, Settings
from streams.runtime.producer import EventProducer
from streams.runtime.sink import ProducerError
from streams.serving.consumer import OutputConsumer
from streams.serving.views import ViewStore
from streams.testing.proxy import TcpProxy
from streams.testing.sample import SampleCampaign
from streams.testing.services import RedisServer, TansuBroker, free_port
from streams.testing.worker import WorkerProcess
from streams.tools.stack import Stack

from .helpers import collect, collect_all

# Every test talks to a broker (a private one, or the stack's through make_settings); those
# that run a worker are e2e, those with Redis views redis.
pytestmark = pytest.mark.broker


def _private_settings(make_settings, broker: TansuBroker, **env: str) -> Settings:
    """Settings for a private broker, from variables only: no Redis views; fresh names
    (make_settings), no topics created."""
    base = Settings.from_env(
        {
            "MTA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "MTA_REDIS_VIEWS": "false",
            **env,
        }
    )
    return make_settings(base=base, create_topics=False)


def _sasl_settings(
    make_settings, broker: TansuBroker, mechanism: str, password: str = "wrong"
) -> Settings:
    return _private_settings(
        make_settings,
        broker,
        MTA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        MTA_SASL_MECHANISM=mechanism,
        MTA_SASL_USERNAME="campaign",
        MTA_SASL_PASSWORD=password,
    )


@pytest.fixture
def auth_broker(tmp_path: Path):
    broker = TansuBroker(tmp_path / "broker.log", authentication=True).start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.mark.e2e
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_rejected_login_fails_clearly_in_every_client(
    auth_broker, tmp_path, mechanism, make_settings
):
    settings = _sasl_settings(make_settings, auth_broker, mechanism)
    producer = EventProducer(settings)
    producer.send("send", event("M1", "relayed", 0))
    with pytest.raises(KafkaAuthError, match=f"user 'campaign' with {mechanism}.*SCRAM"):
        producer.flush(timeout=20)

    started = time.monotonic()
    with (
        pytest.raises(KafkaAuthError, match="unknown-user"),
        OutputConsumer(settings, "status") as c,
    ):
        list(c.records(idle_timeout=10, max_wait=20))
    assert time.monotonic() - started < 10  # at once, not after the idle timeout

    worker = WorkerProcess(settings, tmp_path / "worker.log", views=False).start()
    # Polled, so the ceiling costs nothing: the exit takes ~7 s here, mostly start-up, which
    # a slow or shared machine can stretch several times.
    deadline = time.monotonic() + 120
    while worker.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker.alive(), "the worker kept running with rejected credentials"
    assert "KafkaAuthError: Kafka authentication failed for user 'campaign'" in worker.log_text()
    assert "wrong" not in worker.log_text()  # the password is never printed


def test_plain_is_not_offered_by_tansu(auth_broker, make_settings):
    settings = _sasl_settings(make_settings, auth_broker, "PLAIN")
    producer = EventProducer(settings)
    producer.send("send", event("M1", "relayed", 0))
    with pytest.raises(KafkaAuthError, match="PLAIN mechanism handshake failed"):
        producer.flush(timeout=20)
    assert "NoSharedMechanism" in auth_broker.log_path.read_text()


@pytest.mark.redis
def test_redis_acl_user_from_redis_url(tmp_path, make_settings):
    server = RedisServer(tmp_path / "redis.log", acl_user=("views", "s3cr3t-pw")).start()
    try:
        settings = make_settings(redis_url=server.url)
        store = ViewStore.from_settings(settings)
        record = {"message_id": "M1", "status": "sent", "version": 3, "event_id": "E1"}
        assert store.write("status", [record]) == 1
        assert store.read("msg", "M1") == {"message_id": "M1", "status": "sent", "version": 3}
        assert settings.describe()  # the URL is a setting like the others
        for url in (
            server.url.replace("s3cr3t-pw", "wrong"),
            f"redis://127.0.0.1:{server.port}/0",  # the default user is off
        ):
            bad = ViewStore.from_settings(dataclasses.replace(settings, redis_url=url))
            with pytest.raises(redis.AuthenticationError):
                bad.read("msg", "M1")
    finally:
        server.kill()


def _self_signed(tmp_path):
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    )
    return tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"


@pytest.mark.redis
def test_redis_tls_from_redis_url(tmp_path, make_settings):
    cert, key, ca = _self_signed(tmp_path)
    server = RedisServer(tmp_path / "redis.log", tls=(cert, key, ca)).start()
    try:
        settings = make_settings(redis_url=f"{server.url}?ssl_ca_certs={ca}")
        store = ViewStore.from_settings(settings)
        record = {"message_id": "M1", "status": "sent", "version": 1, "event_id": "E1"}
        assert store.write("status", [record]) == 1
        assert store.read("msg", "M1")["status"] == "sent"
        # Without the CA the server is not trusted; without TLS it does not answer.
        for url in (server.url, server.url.replace("rediss://", "redis://")):
            bad = ViewStore.from_settings(dataclasses.replace(settings, redis_url=url))
            with pytest.raises(redis.ConnectionError):
                bad.read("msg", "M1")
    finally:
        server.kill()


@pytest.mark.e2e
def test_kafka_tls_reaches_every_client(tmp_path, make_settings):
    """MTA_SECURITY_PROTOCOL=SSL and MTA_SSL_CAFILE alone make the producer, the Faust worker
    (aiokafka), its sink and probes (librdkafka), the admin client and the OutputConsumer
    speak TLS. Tansu has no TLS listener here, so a TLS-terminating proxy stands in front of
    it and the broker advertises the proxy: every connection goes through TLS."""
    cert, key, ca = _self_signed(tmp_path)
    proxy_port = free_port()
    broker = TansuBroker(tmp_path / "broker.log", advertised_port=proxy_port).start()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    proxy = TcpProxy(proxy_port, broker.port, tls=context).start()
    settings = _private_settings(
        make_settings,
        broker,
        MTA_SECURITY_PROTOCOL="SSL",
        MTA_SSL_CAFILE=str(ca),
        MTA_DATA_DIR=str(tmp_path / "data"),
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log", views=False)
    try:
        Stack(settings).create_topics()
        worker.start().wait_ready(120)
        with EventProducer(settings) as producer:
            producer.send("send", event("TLS1", "relayed", 0))
        statuses = collect_all(settings, "status", 1)
        assert [s.value["status"] for s in statuses] == ["taken_into_account"]
        assert proxy.connections >= 3  # producer, worker, consumer at least
        # A client that does not trust the CA gets nothing through.
        untrusted = dataclasses.replace(settings, ssl_cafile="")
        producer = EventProducer(untrusted, overrides={"message.timeout.ms": 5000})
        producer.send("send", event("TLS2", "relayed", 1))
        with pytest.raises(ProducerError):
            producer.flush(timeout=20)
    finally:
        worker.stop()
        proxy.stop()
        broker.kill()


@pytest.mark.e2e
def test_no_recipient_address_in_the_worker_log(make_settings, tmp_path):
    """Info-level worker log of a run with normal and hostile input: no recipient in it."""
    settings = make_settings()
    events = SampleCampaign(recipients=300, seed=5).events()
    codec = Codec()
    hostile = {
        "bad.address@nowhere": codec.encode(
            "send", event("H1", "relayed", 0, recipient="bad.address@nowhere")
        ),
        "huge" + "x" * 400 + "@example.org": codec.encode(
            "send", event("H2", "relayed", 0, recipient="huge" + "x" * 400 + "@example.org")
        ),
        "far.future@example.org": codec.encode(
            "send", event("H3", "relayed", 10**13, recipient="far.future@example.org")
        ),
        "rtl\u202eoverride@example.org": codec.encode(
            "send", event("H4", "relayed", 0, recipient="rtl\u202eoverride@example.org")
        ),
    }
    marker = "not.utf8@example.org"
    good = codec.encode("send", event("H5", "relayed", 0, recipient=marker))
    raw = marker.encode()
    hostile[marker] = good.replace(
        bytes([len(raw) * 2]) + raw, bytes([(len(raw) + 1) * 2]) + raw + b"\xff"
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log", views=False).start()
    try:
        worker.wait_ready()
        with EventProducer(settings) as producer:
            for family, ev in events:
                producer.send(family, ev)
            for address, value in hostile.items():
                producer.produce_raw(settings.topic("send"), address.encode(), value)
        assert len(collect_all(settings, "dlq", len(hostile))) == len(hostile)
        mids = {ev["message_id"] for _, ev in events}
        collect(settings, "status", lambda got: mids <= set(got), "message_id")
    finally:
        worker.stop()
    log = worker.log_text()
    assert "dead letter" in log  # the hostile records were logged, just not their addresses
    recipients = {ev["recipient"] for _, ev in events} | set(hostile)
    assert [r for r in recipients if r in log] == []
    # Nor the local parts alone, which identify people as well.
    assert [r for r in recipients if r.rpartition("@")[0] in log] == []
