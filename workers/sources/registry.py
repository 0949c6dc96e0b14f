"""Which connector reads which kind of source: the one entry point the pipeline calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.core.sources_config import SourceConfig
from workers.sources import csv_source, http_json, rss
from workers.sources.base import Extraction, FetchState, PermanentError
from workers.sources.http import HttpFetcher

# (source, state, fetcher, resume): `resume` is where an earlier segment of the run stopped
# (a Boundary's position), None to start from the top.
Connector = Callable[[SourceConfig, FetchState, HttpFetcher | None, dict[str, Any] | None], Extraction]

CONNECTORS: dict[str, Connector] = {
    "http_json": http_json.extract,
    "csv": csv_source.extract,
    "rss": rss.extract,
}


def extract(
    source: SourceConfig,
    state: FetchState,
    fetcher: HttpFetcher | None = None,
    resume: dict[str, Any] | None = None,
) -> Extraction:
    """Open `source` with the connector for its kind, at `resume` when given; `fetcher` lets
    callers (tests) set the retry policy."""
    if source.kind == "webhook":
        raise PermanentError(f"source {source.name!r} is a push source (webhook): it receives POSTs and is not fetched")
    connector = CONNECTORS.get(source.kind)
    if connector is None:
        raise PermanentError(f"source {source.name!r}: no connector for kind {source.kind!r}")
    return connector(source, state, fetcher, resume)
