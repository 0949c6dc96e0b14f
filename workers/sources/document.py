"""Opening a source that is one document parsed whole (a feed): local file or conditional GET.

Such a source can skip all work when nothing changed: a local file whose SHA-256 equals
the stored one, or an upstream answering 304 to If-None-Match / If-Modified-Since. The
validators to store for next time come back in `new_state`, which the pipeline saves
only once the run succeeded. (http_json checks the same way but never holds a document
whole: see http_json.py.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.sources_config import SourceConfig
from workers.sources.base import FetchState
from workers.sources.files import is_local, local_path, read_file
from workers.sources.http import HttpFetcher, describe_url


@dataclass(slots=True)
class Document:
    """The first (or only) body of a source, or word that it did not change."""

    body: bytes
    where: str  # the path or URL, for error messages
    not_modified: bool = False
    new_state: dict[str, Any] = field(default_factory=dict)


def open_local(source: SourceConfig, state: FetchState) -> Document:
    """Read a local file whole (capped); unchanged bytes since the last run mean not_modified."""
    assert source.url is not None
    path = local_path(source.url)
    body, digest = read_file(path, source.max_response_bytes)
    if state.file_hash is not None and digest.sha256 == state.file_hash:
        return Document(body=b"", where=str(path), not_modified=True)
    return Document(body=body, where=str(path), new_state={"file_hash": digest.sha256})


def open_remote(source: SourceConfig, state: FetchState, fetcher: HttpFetcher) -> Document:
    """GET the source url conditionally, with the source's resolved headers."""
    assert source.url is not None
    response = fetcher.get(
        source.url,
        None,
        source.resolved_headers(),
        etag=state.etag,
        last_modified=state.last_modified,
    )
    if response.not_modified:
        return Document(body=b"", where=describe_url(response.url), not_modified=True)
    return Document(body=response.body, where=describe_url(response.url), new_state=response.validators())


def source_is_local(source: SourceConfig) -> bool:
    return source.url is not None and is_local(source.url)


def open_document(source: SourceConfig, state: FetchState, fetcher: HttpFetcher | None = None) -> Document:
    """A single-document source (a feed): local file or one conditional GET; the fetcher is closed if ours."""
    if source_is_local(source):
        return open_local(source, state)
    active = fetcher or HttpFetcher.for_source(source)
    try:
        return open_remote(source, state, active)
    finally:
        if fetcher is None:
            active.close()
