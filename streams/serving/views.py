"""Redis serving views of the pipeline's output topics, for fast lookups.

A view updater reads the output topics (its own consumer group) and writes Redis with a
versioned compare-and-set done atomically in Lua, so an older update never overwrites a
newer one and replays are harmless. The stream workers never wait for Redis: when Redis
is down, only this updater waits, without committing, and catches up when Redis returns;
if Redis comes back empty it rewinds to the beginning of the topics and rebuilds.

Key layout (``P`` is the topic prefix; identifiers are percent-encoded so that no input
can reach into another key's namespace: ``:`` and anything outside ``[A-Za-z0-9@._+-]``
become ``%XX``):

| key | type | content |
| --- | --- | --- |
| ``P:msg:<message_id>`` | hash | the status_change record: status, failure fields, version |
| ``P:addr:<address>`` | hash | state, error_count, reason, last_error_time, version, event_time |
| ``P:gone:msg:<id>`` / ``P:gone:addr:<address>`` | hash | a tombstone's event_time, version |
| ``P:quarantined`` / ``P:denylisted`` | set | addresses in that state (check before sending) |
| ``P:index:quarantined`` / ``P:index:denylisted`` | sorted set | ``<domain> <address>``, score 0 |
| ``P:kpi:<delivery_id>`` | hash | the EFS counters and success_pct, version |
| ``P:throttle:<key>`` | hash | the setting; each change is published on ``P:throttle`` |
| ``P:throttle-history`` | stream | each new throttle version, capped at about 10,000 |
| ``P:reputation:<key>`` | hash | the latest reputation window |
| ``P:views:generation`` | string | marker: when missing, Redis was emptied: rebuild |

The sorted indexes hold the addresses of the two sets, sorted by domain then address, so
that a lister pages through them with ZRANGEBYLEX from the last address it showed.

A message's hash also holds its recipient address when its latest change came from an
event (a record's null fields are not stored: a validity expiry has no recipient).

Tombstones, their markers and the TTL backstop: streams/serving/retirement.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from functools import cache
from typing import Any
from urllib.parse import quote

import redis
import redis.asyncio as aioredis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.pipeline.topics import Topic
from streams.runtime.codec import Codec, DecodeError, load_schema_json
from streams.runtime.config import Settings
from streams.serving.retirement import TOMBSTONE_KINDS, Expiry, Tombstone, tombstone
from streams.serving.view_scripts import RETIRE, UPSERT

log = logging.getLogger(__name__)

VIEW_TOPICS: dict[str, tuple[str, str, str]] = {
    # topic logical name → (Redis key kind, key field, field that orders versions)
    Topic.STATUS: ("msg", "message_id", "version"),
    Topic.ADDRESS: ("addr", "address", "version"),
    Topic.KPI: ("kpi", "delivery_id", "version"),
    Topic.THROTTLE: ("throttle", "key", "version"),
    # Reputation windows have no version: a later window end supersedes an earlier one.
    Topic.REPUTATION: ("reputation", "key", "event_time"),
}


# Address states kept in a set and a sorted index (the ones not to send to).
LISTED_STATES = ("quarantined", "denylisted")


def index_member(address: str) -> str:
    """An address's member in a sorted index: its domain first, so that one domain's
    addresses are one lexicographic range (the upsert script builds the same)."""
    return f"{address.rpartition('@')[2] if '@' in address else ''} {address}"


def key_part(identifier: str) -> str:
    """Percent-encode an identifier for use inside a Redis key."""
    return quote(identifier, safe="@._+-")


class ViewStore:
    """Reads and writes the views; the only place that knows the key layout."""

    def __init__(self, client: redis.Redis, prefix: str, expiry: Expiry | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.expiry = expiry or Expiry.from_settings(Settings())
        self._upsert = client.register_script(UPSERT)
        self._retire = client.register_script(RETIRE)

    @classmethod
    def from_settings(cls, settings: Settings) -> ViewStore:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2, decode_responses=True
        )
        return cls(client, settings.topic_prefix, Expiry.from_settings(settings))

    def key(self, kind: str, identifier: str) -> str:
        return f"{self.prefix}:{kind}:{key_part(identifier)}"

    def index_key(self, state: str) -> str:
        """The sorted index of the addresses in ``state`` (quarantined or denylisted)."""
        return f"{self.prefix}:index:{state}"

    @property
    def generation_key(self) -> str:
        return f"{self.prefix}:views:generation"

    def gone_key(self, kind: str, identifier: str) -> str:
        """The marker a tombstone leaves: its event time and version."""
        return f"{self.prefix}:gone:{kind}:{key_part(identifier)}"

    def write(self, topic: str, records: Iterable[dict[str, Any] | Tombstone]) -> int:
        """Apply records and tombstones of one topic, in order; returns how many."""
        kind, id_field, version_field = VIEW_TOPICS[topic]
        pipe = self.client.pipeline(transaction=False)
        count = 0
        for record in records:
            if isinstance(record, Tombstone):
                if kind not in TOMBSTONE_KINDS:
                    log.warning("ignoring a tombstone on %s: its keys never retire", topic)
                    continue
                self._write_tombstone(kind, record, pipe)
            else:
                self._write_record(
                    topic, kind, record[id_field], record[version_field], record, pipe
                )
            count += 1
        if count:
            pipe.execute()
        return count

    def _listed_keys(self) -> list[str]:
        """The sets and sorted indexes of the listed states, in the order of their ops."""
        return [k for s in LISTED_STATES for k in (f"{self.prefix}:{s}", self.index_key(s))]

    def _write_record(
        self,
        topic: str,
        kind: str,
        identifier: str,
        version: Any,
        record: dict[str, Any],
        pipe: redis.client.Pipeline,
    ) -> None:
        keys = [self.key(kind, identifier)]
        ops = ""
        channel = ""
        if kind in TOMBSTONE_KINDS:
            keys.append(self.gone_key(kind, identifier))
            ops = "!"
        if topic == Topic.ADDRESS:
            keys += self._listed_keys()
            ops += "".join("+>" if record["state"] == s else "-<" for s in LISTED_STATES)
        elif topic == Topic.THROTTLE:
            channel = f"{self.prefix}:throttle"
            keys.append(self.history_key)
            ops = "~"
        flat: list[Any] = []
        for name, value in record.items():
            if value is not None and name != "event_id":
                flat += [name, value if isinstance(value, str) else json.dumps(value)]
        ttl = self.expiry.ttl_s(kind, record)
        event_time = record.get("event_time")
        self._upsert(
            keys=keys,
            args=[
                version,
                identifier,
                ops,
                channel,
                "" if ttl is None else ttl,
                "" if event_time is None else event_time,
                *flat,
            ],
            client=pipe,
        )

    def _write_tombstone(self, kind: str, tomb: Tombstone, pipe: redis.client.Pipeline) -> None:
        keys = [self.key(kind, tomb.key), self.gone_key(kind, tomb.key)]
        ops = ""
        if kind == "addr":
            keys += self._listed_keys()
            ops = "-<" * len(LISTED_STATES)
        self._retire(
            keys=keys,
            args=[
                "" if tomb.version is None else tomb.version,
                tomb.key,
                ops,
                "" if tomb.event_time is None else tomb.event_time,
                self.expiry.marker_s,
            ],
            client=pipe,
        )

    @property
    def history_key(self) -> str:
        """The capped stream of throttle changes (``:`` would put it among the hashes)."""
        return f"{self.prefix}:throttle-history"

    def read(self, kind: str, identifier: str) -> dict[str, Any] | None:
        raw = self.client.hgetall(self.key(kind, identifier))
        return decode_view(kind, raw) if raw else None

    def scan(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for key in self.client.scan_iter(match=f"{self.prefix}:{kind}:*", count=500):
            raw = self.client.hgetall(key)
            if raw:
                out.append(decode_view(kind, raw))
        return out

    def is_listed(self, address: str) -> str | None:
        """'quarantined' or 'denylisted' if the address must not be sent to, else None."""
        pipe = self.client.pipeline(transaction=False)
        pipe.sismember(f"{self.prefix}:quarantined", address)
        pipe.sismember(f"{self.prefix}:denylisted", address)
        quarantined, denylisted = pipe.execute()
        return "denylisted" if denylisted else "quarantined" if quarantined else None


def _schema_fields(kind: str) -> list[dict[str, Any]]:
    topic = next(t for t, (k, _, _) in VIEW_TOPICS.items() if k == kind)
    return load_schema_json(topic)["fields"]  # type: ignore[no-any-return]


@cache
def _stored_fields(kind: str) -> tuple[str, ...]:
    """The fields a view's hash may hold (a null field is not stored; nor is event_id)."""
    return tuple(f["name"] for f in _schema_fields(kind) if f["name"] != "event_id")


@cache
def _text_fields(kind: str) -> frozenset[str]:
    """The fields of a view's schema that hold text (strings, enums), kept as they are."""
    text = set()
    for f in _schema_fields(kind):
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if any(t == "string" or (isinstance(t, dict) and t.get("type") == "enum") for t in types):
            text.add(f["name"])
    return frozenset(text)


def decode_view(kind: str, raw: dict[str, str]) -> dict[str, Any]:
    """A view's hash as its record: text fields as stored (an id of digits stays a
    string), the others JSON-decoded."""
    text = _text_fields(kind)
    return {k: v if k in text else _parse(v) for k, v in raw.items()}


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _whole(kind: str, raw: dict[str, str]) -> dict[str, Any]:
    """A view's record with every field of its schema, null where the hash has none."""
    return {name: None for name in _stored_fields(kind)} | decode_view(kind, raw)


class AsyncViewReader:
    """Reads of the views from an event loop (redis.asyncio), for the HTTP service: whole
    records, a null for each field not stored."""

    def __init__(self, client: aioredis.Redis, store: ViewStore) -> None:
        self.client = client
        self.store = store

    async def read(self, kind: str, identifier: str) -> dict[str, Any] | None:
        raw = await self.client.hgetall(self.store.key(kind, identifier))
        return _whole(kind, raw) if raw else None

    async def scan(self, kind: str) -> list[dict[str, Any]]:
        keys = [k async for k in self.client.scan_iter(f"{self.store.prefix}:{kind}:*", 500)]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [_whole(kind, raw) for raw in await pipe.execute() if raw]

    async def listed(
        self, states: Iterable[str], low: str, high: str, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The address records of up to ``limit`` members of the indexes of ``states`` in
        the ZRANGEBYLEX range (``low``, ``high``), merged in index order (an address whose
        state changed since it was indexed is left out); and the last address read when
        the indexes hold more beyond it, else None."""
        pipe = self.client.pipeline(transaction=False)
        for state in states:
            pipe.zrangebylex(self.store.index_key(state), low, high, 0, limit + 1)
        found = sorted(m for members in await pipe.execute() for m in members)
        more = len(found) > limit
        addresses = [m.partition(" ")[2] for m in found[:limit]]
        pipe = self.client.pipeline(transaction=False)
        for address in addresses:
            pipe.hgetall(self.store.key("addr", address))
        records = [_whole("addr", raw) for raw in await pipe.execute() if raw]
        wanted = set(states)
        last = addresses[-1] if more else None
        return [r for r in records if r.get("state") in wanted], last


class ViewUpdater:
    """Consumes the output topics into Redis; run it in a thread or on its own."""

    def __init__(self, settings: Settings, store: ViewStore | None = None) -> None:
        self.settings = settings
        self.store = store or ViewStore.from_settings(settings)
        self.codec = Codec.from_settings(settings)
        self._topics = {settings.topic(name): name for name in VIEW_TOPICS}
        self._stop = threading.Event()
        self._generation = uuid.uuid4().hex
        self._marked = False
        self.applied = 0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "group.id": f"{self.settings.app_id}-views",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": int(self.settings.session_timeout_s * 1000),
                "heartbeat.interval.ms": int(self.settings.heartbeat_interval_s * 1000),
                **self.settings.kafka_client_config(),
            }
        )
        consumer.subscribe(list(self._topics))
        backoff = 0.5
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(1000, timeout=0.5)
                if not msgs:
                    continue
                while not self._stop.is_set():
                    try:
                        if self._redis_was_emptied():
                            self._rewind(consumer)
                            break
                        self._apply(msgs)
                        consumer.commit(asynchronous=False)
                        backoff = 0.5
                        break
                    except redis.RedisError as exc:
                        log.warning("Redis unavailable (%s); views wait and retry", exc)
                        time.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                    except Exception:
                        # A bug, not an outage: say so loudly, keep the batch, try again.
                        log.exception("view update failed; retrying the same batch")
                        time.sleep(5.0)
        finally:
            consumer.close()

    def _redis_was_emptied(self) -> bool:
        """True once per emptying: the marker we set is gone (first call sets it)."""
        if not self._marked:
            self.store.client.set(self.store.generation_key, self._generation)
            self._marked = True
            return False
        if self.store.client.exists(self.store.generation_key):
            return False
        log.warning("Redis views were emptied (restart); rebuilding from the topics")
        self.store.client.set(self.store.generation_key, self._generation)
        return True

    def _rewind(self, consumer: Consumer) -> None:
        for tp in consumer.assignment():
            consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))

    def _apply(self, msgs: list[Any]) -> None:
        # Records and tombstones stay in topic order: a key may retire and be reborn in
        # one batch.
        by_topic: dict[str, list[dict[str, Any] | Tombstone]] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("view consumer: %s", err)
                continue
            name = self._topics[msg.topic()]
            value = msg.value()
            if value is None:
                tomb = tombstone(msg.key(), msg.headers())
                if tomb is None:
                    log.error("view consumer: skipping a %s tombstone without a key", name)
                else:
                    by_topic.setdefault(name, []).append(tomb)
                continue
            try:
                by_topic.setdefault(name, []).append(
                    self.codec.decode(name, value)  # view topics share their schema's name
                )
            except DecodeError as exc:
                # Output topics are written by the workers only; a bad record is a bug.
                log.error("view consumer: skipping undecodable %s record: %s", name, exc)
        for name, records in by_topic.items():
            self.applied += self.store.write(name, records)
