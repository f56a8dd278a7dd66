"""Settings of ``mta-feedback sink-postgres``, read from environment variables with the
conventions of streams/runtime/config.py: every field names its variable, a bad value
fails fast naming it, and the DSN's password never shows when printed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from streams.runtime.config import _float, _int, _text, _var, parse_env
from streams.runtime.secrets import MASK, mask_secrets

# ``password=...`` in a key/value connection string (quoted or not).
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with its password masked, in URL (``postgresql://u:****@h/db``) or
    key/value (``host=h password=****``) form, query parameters included."""
    return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, mask_secrets(dsn))


def _dsn(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw


@dataclass(frozen=True)
class PgSettings:
    dsn: str = _var(
        "MTA_POSTGRES_DSN",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        _dsn,
        "PostgreSQL of sink-postgres (libpq URL or key/value; the password is masked)",
    )
    group: str = _var(
        "MTA_POSTGRES_GROUP",
        "",
        _text,
        "Consumer group of sink-postgres; empty: <MTA_APP_ID>.sink-postgres",
    )
    batch_rows: int = _var(
        "MTA_POSTGRES_BATCH_ROWS", 10_000, _int(1, 1_000_000), "Records per transaction, at most"
    )
    batch_wait_ms: int = _var(
        "MTA_POSTGRES_BATCH_WAIT_MS",
        200,
        _int(1, 60_000),
        "Longest wait for a batch to fill before it is written",
    )
    retry_max_s: float = _var(
        "MTA_POSTGRES_RETRY_MAX_S",
        30.0,
        _float(0.1, 3600.0),
        "Longest pause between attempts while PostgreSQL is unreachable",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PgSettings:
        return cls(**parse_env(cls, environ, mask_dsn))

    def group_id(self, app_id: str) -> str:
        return self.group or f"{app_id}.sink-postgres"

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, effective value, doc) rows, the DSN's password masked."""
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown = mask_dsn(value) if f.name == "dsn" else str(value)
            rows.append((f.metadata["env"], shown, f.metadata["doc"]))
        return rows


PG_VARS: frozenset[str] = frozenset(f.metadata["env"] for f in fields(PgSettings))
