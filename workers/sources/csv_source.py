"""The csv connector: rows of a local file or of a file over HTTP, streamed, never loaded whole.

Neither has a size cap: both are read a batch of rows at a time, in segments
(workers/pipeline/fetch/segment.py). After every batch comes a Boundary holding the byte
offset and line of the next row and the file's identity; a later segment checks the
identity and reads on from the offset, and a file that changed in between is read again
from the top. The rows themselves come from csv_rows.CsvRows.

A local file is read once to hash it and to learn whether it is valid UTF-8 (else it is
Latin-1, which decodes any byte), then once more row by row, from the first segment on:
its identity is its size, mtime and a hash of its first block. An unchanged hash ends
the run before any parsing. A file over HTTP is read as it arrives (csv_stream.py).
"""

from __future__ import annotations

from typing import Any

from app.core.sources_config import SourceConfig
from workers.sources.base import Extraction, FetchState
from workers.sources.csv_rows import RAW_TEXT_LIMIT, ROWS_PER_BATCH, CsvRows, flatten
from workers.sources.csv_stream import open_remote
from workers.sources.document import source_is_local
from workers.sources.files import ContentDigest, digest_file, file_identity, local_path
from workers.sources.http import HttpFetcher

__all__ = ["RAW_TEXT_LIMIT", "ROWS_PER_BATCH", "CsvRows", "extract"]


def extract(
    source: SourceConfig,
    state: FetchState,
    fetcher: HttpFetcher | None = None,
    resume: dict[str, Any] | None = None,
) -> Extraction:
    """Open the file (at `resume`, when given), check whether it changed, read the header;
    rows come lazily, as RowBatches (`batches`) or RawItems (`items`), with Boundaries."""
    assert source.url is not None
    if source_is_local(source):
        return _extract_local(source, state, resume)
    opened = open_remote(source, state, fetcher, resume)
    if opened.rows is None:
        return Extraction(items=iter(()), not_modified=True)
    batches = opened.rows.batches(ROWS_PER_BATCH)
    return Extraction(items=flatten(batches), batches=batches, new_state=opened.new_state, restarted=opened.restarted,
                      final_progress=opened.rows.final_progress)


def _extract_local(source: SourceConfig, state: FetchState, resume: dict[str, Any] | None) -> Extraction:
    """A local file, read from `resume` when the file is still the one the run started on,
    else from the top. It has no size cap: it is read a row at a time, in segments."""
    assert source.url is not None
    path = local_path(source.url)
    restarted = None
    if resume is not None:
        if file_identity(path) == resume["identity"]:
            rows = CsvRows(path, resume["encoding"], source.delimiter, str(path),
                           max_field_chars=source.max_field_chars, resume=resume)
            batches = rows.batches(ROWS_PER_BATCH)
            return Extraction(items=flatten(batches), batches=batches, new_state={"file_hash": resume["file_hash"]},
                              final_progress=rows.final_progress)
        # Never two versions of a file in one run: the new one is read whole, and its chunks,
        # numbered after the old one's, win over them (workers/pipeline/upsert/records.py).
        restarted = f"{path} changed since the run started reading it (size, mtime or first block): read from the top"
    identity = file_identity(path)
    digest = digest_file(path, None)
    if resume is None and state.file_hash is not None and digest.sha256 == state.file_hash:
        return Extraction(items=iter(()), not_modified=True)
    encoding = _encoding(digest)
    rows = CsvRows(path, encoding, source.delimiter, str(path), max_field_chars=source.max_field_chars,
                   resume={"identity": identity, "file_hash": digest.sha256, "encoding": encoding})
    batches = rows.batches(ROWS_PER_BATCH)
    return Extraction(items=flatten(batches), batches=batches, new_state={"file_hash": digest.sha256},
                      restarted=restarted, final_progress=rows.final_progress)


def _encoding(digest: ContentDigest) -> str:
    return "utf-8" if digest.is_utf8 else "latin-1"
