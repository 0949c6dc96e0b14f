"""Loading and validating `sources.toml` (CONTRACT section 3).

A bad file fails at start-up with ONE message naming the file, the source and the key,
so an operator never has to guess which line to fix.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Kind = Literal["http_json", "csv", "rss", "webhook"]
Pagination = Literal["none", "page", "offset", "cursor", "link"]
Coercion = Literal["int", "float", "bool", "datetime", "date", "str"]
OnDrift = Literal["record", "reject", "pause"]

_EVERY_RE = re.compile(r"^every\s+(\d+)\s*([smh])$")
_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HOST_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}


class SourceConfigError(ValueError):
    """Raised with a message that names the file, the source and the key."""


class Schedule(BaseModel):
    """A parsed schedule: either a fixed interval or a 5-field cron expression."""

    model_config = ConfigDict(frozen=True)
    text: str
    every: timedelta | None = None
    cron: tuple[str, str, str, str, str] | None = None


def parse_schedule(text: str) -> Schedule:
    """Parse "every <n>s|m|h" or a 5-field cron expression; raise ValueError if neither."""
    text = text.strip()
    match = _EVERY_RE.match(text)
    if match:
        seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
        if seconds <= 0:
            raise ValueError("interval must be positive")
        return Schedule(text=text, every=timedelta(seconds=seconds))
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"{text!r} is neither 'every <n>s|m|h' nor a 5-field cron expression")
    from celery.schedules import crontab  # validates each field with Celery's own parser

    try:
        crontab(*fields).remaining_estimate  # noqa: B018 - parsing happens in the constructor
    except Exception as exc:  # celery raises ValueError subclasses with terse messages
        raise ValueError(f"bad cron expression {text!r}: {exc}") from exc
    return Schedule(text=text, every=None, cron=tuple(fields))  # type: ignore[arg-type]


class SourceConfig(BaseModel):
    """One source. Unknown keys are errors: a typo must not silently do nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Kind
    url: str | None = None
    id_field: str | None = None
    records_path: str = ""
    pagination: Pagination = "none"
    page_param: str = "page"
    size_param: str = "per_page"
    page_size: int = Field(100, ge=1, le=100_000)
    start_page: int = 1
    offset_param: str = "offset"
    limit_param: str = "limit"
    cursor_param: str = "cursor"
    next_cursor_path: str = "meta.next"
    incremental_field: str | None = None
    since_param: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    redirect_hosts: list[str] = Field(default_factory=list)
    schedule: str = "every 15m"
    chunk_size: int = Field(1000, ge=1, le=100_000)
    enabled: bool = True
    fields: dict[str, str] = Field(default_factory=dict)
    types: dict[str, Coercion] = Field(default_factory=dict)
    delimiter: str = ","
    # csv: the longest field, in characters. Python's csv default (131,072) refuses real exports
    # (long descriptions, embedded documents); still bounded, so one broken quote cannot make a
    # row swallow the rest of the file into memory.
    max_field_chars: int = Field(8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    secret_env: str | None = None
    on_drift: OnDrift = "record"
    timeout_s: float = Field(30.0, gt=0, le=3600, description="Total deadline per HTTP request.")
    max_response_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    max_pages: int = Field(100_000, ge=1)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("source names are lowercase letters, digits, '-' and '_'")
        return value

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError("delimiter must be exactly one character")
        return value

    @field_validator("redirect_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        return [_host_name(entry) for entry in value]

    @field_validator("fields")
    @classmethod
    def _known_unified_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - UNIFIED_FIELDS
        if unknown:
            raise ValueError(f"unknown unified field(s) {sorted(unknown)}; allowed: {sorted(UNIFIED_FIELDS)}")
        return value

    @model_validator(mode="after")
    def _kind_requirements(self) -> SourceConfig:
        if self.kind in ("http_json", "csv", "rss") and not self.url:
            raise ValueError(f"'url' is required for kind {self.kind!r}")
        if self.kind in ("http_json", "csv", "webhook") and not self.id_field:
            raise ValueError(f"'id_field' is required for kind {self.kind!r}")
        if self.kind == "webhook" and not self.secret_env:
            raise ValueError("'secret_env' is required for kind 'webhook'")
        if self.pagination != "none" and self.kind != "http_json":
            raise ValueError("'pagination' applies to kind 'http_json' only")
        if self.incremental_field and self.types.get(self.incremental_field) == "bool":
            raise ValueError("'incremental_field' cannot be a bool field: true/false have no order to resume from")
        if self.redirect_hosts and self.kind == "webhook":
            raise ValueError("'redirect_hosts' applies to pulled sources only, not kind 'webhook'")
        return self

    @property
    def parsed_schedule(self) -> Schedule:
        return parse_schedule(self.schedule)

    @property
    def is_pulled(self) -> bool:
        return self.kind != "webhook"

    def resolved_headers(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """Headers with ${VAR} expanded from the environment, at the moment of use only."""
        env = os.environ if environ is None else environ
        return {key: _ENV_REF_RE.sub(lambda m: env.get(m.group(1), ""), value) for key, value in self.headers.items()}

    def secret_values(self, environ: dict[str, str] | None = None) -> list[str]:
        """Every secret this source resolves, so logs and errors can redact them."""
        env = os.environ if environ is None else environ
        names = {m.group(1) for value in self.headers.values() for m in _ENV_REF_RE.finditer(value)}
        if self.secret_env:
            names.add(self.secret_env)
        return [env[name] for name in names if env.get(name)]

    def snapshot(self) -> dict[str, Any]:
        """JSON-able config stored with each run; ${VAR} references stay unexpanded."""
        return self.model_dump(mode="json")


def _host_name(entry: str) -> str:
    """A host name or IP address alone, lowercased; anything else names what to remove."""
    text = entry.strip().lower()
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    try:
        ascii_name = text.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    labels = ascii_name.rstrip(".").split(".")
    if not ascii_name or len(ascii_name) > 253 or not all(_HOST_LABEL_RE.match(label) for label in labels):
        raise ValueError(
            f"{entry!r} is not a host name: give the host alone, e.g. 'cdn.example.com' "
            "(no scheme, port, path or wildcard)"
        )
    return text.rstrip(".")


UNIFIED_FIELDS = frozenset({"title", "content", "author", "url", "published_at"})


def _format_error(path: Path, source: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(source)"
        problems.append(f"key '{key}': {err['msg']}")
    return f"{path}: source '{source}': " + "; ".join(problems)


def _resolve_local_url(section: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A local path is relative to the sources file, so workers in any cwd find it."""
    url = section.get("url")
    if isinstance(url, str) and url and "://" not in url:
        local = Path(url)
        if not local.is_absolute():
            section = {**section, "url": str((base_dir / local).resolve())}
    return section


def parse_sources(data: dict[str, Any], path: Path) -> dict[str, SourceConfig]:
    """Validate the parsed TOML document; raise SourceConfigError naming file/source/key."""
    unknown_top = set(data) - {"sources"}
    if unknown_top:
        raise SourceConfigError(f"{path}: unknown top-level key(s) {sorted(unknown_top)}; expected [sources.<name>]")
    sections = data.get("sources", {})
    if not isinstance(sections, dict):
        raise SourceConfigError(f"{path}: 'sources' must be a table of [sources.<name>] sections")
    sources: dict[str, SourceConfig] = {}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise SourceConfigError(f"{path}: source '{name}': must be a table")
        section = _resolve_local_url(section, path.parent)
        try:
            sources[name] = SourceConfig(name=name, **section)
        except ValidationError as exc:
            raise SourceConfigError(_format_error(path, name, exc)) from None
        except TypeError as exc:
            raise SourceConfigError(f"{path}: source '{name}': {exc}") from None
    return sources


def load_sources(path: str | Path) -> dict[str, SourceConfig]:
    """Read and validate a sources file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceConfigError(f"{path}: file not found (set SOURCES_FILE)") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SourceConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_sources(data, path)
