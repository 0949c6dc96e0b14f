"""Reading local source files: size-capped (documents) or not (streamed files), hashed while read,
UTF-8 validity checked on the way.

Local paths are how the bundled samples and operator-dropped files reach the pipeline. A file
parsed as one document (JSON, XML) gets the same size cap as HTTP bodies, so a wrong path (say,
a multi-gigabyte log) fails clearly instead of exhausting a worker's memory. A file read as a
stream of rows (CSV) has no cap: memory stays one chunk whatever its size.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from workers.sources.base import PermanentError

READ_CHUNK_BYTES = 1024 * 1024


class ContentDigest:
    """SHA-256, byte count and "is this valid UTF-8" of a byte stream, fed chunk by chunk.

    Computing all three in one pass means a file is read once to decide both whether it
    changed (hash) and how to decode it (UTF-8, else Latin-1).
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._decoder: codecs.IncrementalDecoder | None = codecs.getincrementaldecoder("utf-8")("strict")
        self.size = 0
        self._finished = False

    def update(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        self.size += len(chunk)
        if self._decoder is not None:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                self._decoder = None  # one bad sequence settles it; stop paying for decoding

    def finish(self) -> None:
        """Flush the decoder so a multi-byte sequence cut off at the end counts as invalid."""
        if not self._finished and self._decoder is not None:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self._decoder = None
        self._finished = True

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def is_utf8(self) -> bool:
        self.finish()
        return self._decoder is not None


def is_local(url: str) -> bool:
    """A url with no scheme, or a file:// url, names a local file."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    """The filesystem path a local url names."""
    if url.startswith("file://"):
        return Path(unquote(urlsplit(url).path))
    return Path(url)


def _open_checked(path: Path, max_bytes: int | None) -> BinaryIO:
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise PermanentError(f"file {path} is larger than {max_bytes} bytes")
        return path.open("rb")
    except FileNotFoundError:
        raise PermanentError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise PermanentError(f"not a file: {path}") from None
    except PermissionError:
        raise PermanentError(f"permission denied reading {path}") from None


def capped_chunks(path: Path, max_bytes: int | None) -> Iterator[bytes]:
    """Yield the file's bytes; the cap (None: none) is re-checked while reading because a file can grow."""
    total = 0
    with _open_checked(path, max_bytes) as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise PermanentError(f"file {path} is larger than {max_bytes} bytes")
            yield chunk


def digest_file(path: Path, max_bytes: int | None) -> ContentDigest:
    """Stream the file once through a ContentDigest, without keeping its bytes."""
    digest = ContentDigest()
    for chunk in capped_chunks(path, max_bytes):
        digest.update(chunk)
    digest.finish()
    return digest


def read_file(path: Path, max_bytes: int) -> tuple[bytes, ContentDigest]:
    """The whole file (for formats parsed as one document: JSON, XML) and its digest."""
    digest = ContentDigest()
    parts = []
    for chunk in capped_chunks(path, max_bytes):
        digest.update(chunk)
        parts.append(chunk)
    digest.finish()
    return b"".join(parts), digest


HEAD_BYTES = 64 * 1024


def file_identity(path: Path) -> dict[str, int | str]:
    """What tells one version of a file from another without reading it all: size, mtime and
    a hash of its first block. A fetch resuming mid-file (workers/pipeline/fetch/segment.py)
    compares it with the one its run started with: any difference and it reads from the top."""
    try:
        stat = path.stat()
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except FileNotFoundError:
        raise PermanentError(f"file not found: {path}") from None
    except PermissionError:
        raise PermanentError(f"permission denied reading {path}") from None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": hashlib.sha256(head).hexdigest()}
