"""One validated Settings object, read from the environment and `.env`.

Every variable is documented in `.env.example`. Tests build their own instance through
the constructor instead of patching globals.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)\s*$")
_RATE_PERIOD_S = {"second": 1, "minute": 60, "hour": 3600}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/ingest",
        description="Plain libpq URL; driver URLs (asyncpg, psycopg) are derived from it.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Broker, result backend, rate limits.")
    celery_broker_url: str = Field("", description="Broker override (e.g. amqp://); empty = REDIS_URL.")
    sources_file: str = Field("sources.toml", description="Path of the source configuration.")
    api_keys: str = Field("", description="Comma-separated API keys; `sha256:<hex>` entries are hashes.")
    task_timeout_s: int = Field(300, ge=10, le=86_400, description="Longest a task may run.")
    rate_limit: str = Field("600/minute", description="Requests per key (or client IP) per period.")
    log_level: str = Field("INFO")
    log_format: str = Field("json", description="json | console")
    max_task_attempts: int = Field(5, ge=1, le=100, description="Deliveries of one task before it is poison.")
    cors_origins: str = Field("", description="Comma-separated allowed CORS origins; empty = CORS closed.")
    webhook_window_s: float = Field(
        2.0, ge=0.1, le=60, description="Deliveries arriving within this window are batched into one run."
    )
    webhook_max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest accepted webhook body.")
    flower_url: str = Field("http://127.0.0.1:5555", description="Where the console links to Flower.")
    fetch_segment_s: float = Field(
        60, ge=1, le=3600,
        description="Longest a fetch task reads before it commits its position and hands on to a continuation"
        " task (at most a quarter of TASK_TIMEOUT_S is used).",
    )
    fetch_segment_chunks: int = Field(
        200, ge=1, le=1_000_000, description="Most raw chunks a fetch task stores before it hands on."
    )
    raw_retention_days: float = Field(
        7, ge=0, le=3650, description="Raw chunks of a finished run are kept this long, then pruned."
    )
    forwarded_allow_ips: str = Field(
        "",
        description="Proxies trusted for client addresses (X-Forwarded-For, X-Forwarded-Proto): comma-separated"
        " IP addresses or networks, or `*`; empty = none, the client is the connecting peer.",
    )

    @field_validator("database_url")
    @classmethod
    def _plain_postgres_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(f"must be a postgresql:// URL, got scheme {scheme!r}")
        return value

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in ("json", "console"):
            raise ValueError("must be 'json' or 'console'")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _parsable_rate(cls, value: str) -> str:
        if not _RATE_RE.match(value):
            raise ValueError("must look like '600/minute' (second|minute|hour)")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses_or_networks(cls, value: str) -> str:
        entries = _comma_list(value)
        if entries == ["*"]:
            return value
        for entry in entries:
            try:
                if "/" in entry:
                    ipaddress.ip_network(entry)
                else:
                    ipaddress.ip_address(entry)
            except ValueError as exc:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8, ::1), or '*' alone: {exc}"
                ) from None
        return value

    @model_validator(mode="after")
    def _broker_default(self) -> Settings:
        if not self.celery_broker_url:
            self.celery_broker_url = self.redis_url
        return self

    # --- derived values -------------------------------------------------------------

    @property
    def segment_budget_s(self) -> float:
        """How long one fetch segment reads: FETCH_SEGMENT_S, and never more than a quarter of
        the task time limit, so a segment ends (and commits) long before the limit kills it."""
        return min(self.fetch_segment_s, self.task_timeout_s / 4)

    @property
    def database_name(self) -> str:
        return urlsplit(self.database_url).path.lstrip("/") or "postgres"

    def _with_scheme(self, scheme: str) -> str:
        parts = urlsplit(self.database_url)
        return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))

    @property
    def async_database_url(self) -> str:
        """SQLAlchemy URL for the API (asyncpg driver)."""
        return self._with_scheme("postgresql+asyncpg")

    @property
    def sqlalchemy_sync_url(self) -> str:
        """SQLAlchemy URL for Alembic (psycopg 3 driver)."""
        return self._with_scheme("postgresql+psycopg")

    @property
    def libpq_url(self) -> str:
        """URL psycopg connects with directly (workers)."""
        return self._with_scheme("postgresql")

    def maintenance_url(self) -> str:
        """The same server, database `postgres`: used to create the target database."""
        parts = urlsplit(self.database_url)
        return urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, parts.fragment))

    @property
    def rate_limit_parsed(self) -> tuple[int, int]:
        """(requests, period seconds)."""
        match = _RATE_RE.match(self.rate_limit)
        assert match  # validated above
        return int(match.group(1)), _RATE_PERIOD_S[match.group(2)]

    @property
    def api_key_entries(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def trusted_proxies(self) -> list[str]:
        """FORWARDED_ALLOW_IPS as a list; empty when no proxy is trusted."""
        return _comma_list(self.forwarded_allow_ips)

    @property
    def visibility_timeout_s(self) -> int:
        """Broker redelivers unacked work after this; must exceed the task time limit."""
        return self.task_timeout_s * 2 + 60


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
