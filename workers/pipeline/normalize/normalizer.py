"""Normalize: validate, map and coerce raw items into the unified record shape.

Pure functions, no I/O: a chunk of RawItem in, accepted records and rejections out.
A record is never silently dropped: it is accepted, rejected with a reason, or (when the
same id appears twice in one chunk) superseded by its later copy and counted unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from app.core import exact_json
from app.core.exact_json import MAX_DEPTH, first_non_finite, nesting_exceeds, stdlib_dumps
from app.core.sources_config import UNIFIED_FIELDS, SourceConfig
from app.core.text import NUL, stored_key
from workers.pipeline.incremental import IncrementalOrder, Position, UncomparableValue, is_after
from workers.pipeline.normalize.coerce import COERCERS, NULLABLE_COERCERS, CoercionError, is_empty, to_datetime
from workers.pipeline.normalize.drift import Signature, misfit, observed_fields, signature
from workers.sources.base import RawItem, dotted_get

# Reason codes stored with every rejection (docs/sources.md lists them).
MISSING_ID = "missing_id"
COERCION_FAILED = "coercion_failed"
PARSE_ERROR = "parse_error"
SCHEMA_DRIFT = "schema_drift"
INCREMENTAL_INVALID = "incremental_invalid"
NON_FINITE_NUMBER = "non_finite_number"
TOO_DEEP = "too_deep"
UNSTORABLE = "unstorable"

RSS_DEFAULT_FIELDS = {
    "title": "title",
    "url": "link",
    "content": "description",
    "author": "author",
    "published_at": "published",
}
IDENTITY_FIELDS = {name: name for name in UNIFIED_FIELDS}


@dataclass(slots=True)
class NormalizedRecord:
    external_id: str
    title: str | None
    content: str | None
    author: str | None
    url: str | None
    published_at: datetime | None
    data: dict[str, Any]
    content_hash: bytes
    raw_digest: bytes | None = None  # of the raw row it was made from (raw_digest.py)
    data_json: str | None = None  # `data` as JSON text (see content_of), written as it is
    item: RawItem | None = None  # what it was made from, for a rejection at the upsert
    repeat: bool = False  # a later copy of an id an earlier chunk of the run holds (fetch/repeats.py)


@dataclass(slots=True)
class Rejection:
    reason: str
    message: str
    field: str | None = None
    line_no: int | None = None
    external_id: str | None = None
    raw: Any = None


@dataclass
class NormalizedChunk:
    records: list[NormalizedRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    superseded: int = 0
    max_incremental: Any = None  # the greatest incremental value, in its stored form (incremental.py)
    observed: dict[str, str] = field(default_factory=dict)


# Failures a record's own values can cause anywhere in normalising it: each rejects that
# record. Not Exception: a task's time limit or a lost connection is no fault of a record.
_RECORD_FAULTS = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError, RecursionError)


class _Rejected(Exception):
    def __init__(self, reason: str, message: str, field: str | None = None):
        super().__init__(message)
        self.rejection = Rejection(reason=reason, message=message, field=field)


class Normalizer:
    """Everything derived from a source's config once, then applied to every record."""

    def __init__(self, source: SourceConfig, known_schema: dict[str, str] | None = None):
        self.source = source
        # on_drift = "reject": records whose shape the known schema does not allow are rejected.
        self.reject_against = known_schema if source.on_drift == "reject" and known_schema else None
        self.id_field = source.id_field or "id"
        self.incremental = IncrementalOrder.of(source.incremental_field, source.types)
        defaults = RSS_DEFAULT_FIELDS if source.kind == "rss" else IDENTITY_FIELDS
        self.mapping = {**defaults, **source.fields}
        self.types = [(name.split("."), COERCERS[kind], name) for name, kind in source.types.items()]
        # Compiled once for the per-record loop (a million records make every call count):
        # a path without a dot is one dict lookup, not a dotted walk.
        self._id_key = self.id_field if _is_flat(self.id_field) else None
        self._unified = [(name, path, _is_flat(path)) for name, path in self.mapping.items()]
        self._flat_types = (
            [(name, NULLABLE_COERCERS[kind]) for name, kind in source.types.items()]
            if all(_is_flat(name) for name in source.types)
            else None
        )
        self._fast = self._compile_fast_path()

    def normalize_chunk(self, items: list[RawItem]) -> NormalizedChunk:
        """Normalize a chunk: de-duplicated by external id as stored (last wins) and sorted by it."""
        chunk = NormalizedChunk()
        by_id: dict[str, NormalizedRecord] = {}
        incremental = self.incremental
        greatest: Position | None = None
        shapes: dict[Signature, str | None] = {}  # distinct record shapes -> misfit field
        # (keys, value types) -> signature: two C-built tuples per record instead of a generator
        signatures: dict[tuple[tuple[str, ...], tuple[type, ...]], Signature] = {}
        fast = self._fast
        for item in items:
            try:
                if fast is None:
                    record = None
                elif item.values is not None:  # a CSV row: its dict is built here, and owned
                    record = fast(dict(zip(item.columns or (), item.values, strict=True)), True)
                else:
                    record = fast(item.record, False)
                if record is None:  # not the common case (or a rejection): the general path decides
                    record = self.normalize_item(item)
                data = record.data
                layout = (tuple(data), tuple(map(type, data.values())))
                shape = signatures.get(layout)
                if shape is None:
                    shape = signatures[layout] = signature(data)
                if shape not in shapes:
                    shapes[shape] = misfit(shape, self.reject_against) if self.reject_against else None
                if shapes[shape] is not None:
                    raise _Rejected(SCHEMA_DRIFT, "field not in the source's known schema", shapes[shape])
                if incremental is not None:
                    greatest = _greater(incremental, data, greatest)
            except (_Rejected, *_RECORD_FAULTS) as exc:  # what fails for one record fails that record only
                if isinstance(exc, _Rejected):
                    rejection = exc.rejection
                else:
                    rejection = Rejection(UNSTORABLE, f"could not be normalised: {type(exc).__name__}: {exc}")
                rejection.line_no = item.line
                rejection.raw = item.record if item.record is not None else item.raw_text
                if item.record is not None and rejection.reason != MISSING_ID:
                    identity = dotted_get(item.record, self.id_field)
                    rejection.external_id = None if is_empty(identity) else str(identity)
                chunk.rejections.append(rejection)
                continue
            record.raw_digest = item.digest
            record.item = item
            if item.repeat:
                record.repeat = True
            key = record.external_id
            if NUL in key:  # one record as stored (stored_key): the upsert writes each key once
                key = stored_key(key)
            if key in by_id:
                chunk.superseded += 1
            by_id[key] = record
        if greatest is not None:
            chunk.max_incremental = IncrementalOrder.stored(greatest)
        chunk.records = [by_id[key] for key in sorted(by_id)]
        chunk.observed = observed_fields(shapes)
        return chunk

    def _compile_fast_path(self) -> Callable[[Any, bool], NormalizedRecord | None] | None:
        """normalize_item for the common configuration (every path a top-level key), as one
        closure with everything bound: None for anything unusual (an empty or non-scalar id,
        a value that does not coerce, a date that does not parse), which normalize_item then
        handles, or rejects with its reason. Same result either way; tested against it."""
        if self._id_key is None or self._flat_types is None or not all(flat for _, _, flat in self._unified):
            return None
        id_key, types = self._id_key, self._flat_types
        paths = [self.mapping[name] for name in ("title", "content", "author", "url", "published_at")]

        def normalize(record: Any, owned: bool) -> NormalizedRecord | None:
            """`owned`: the caller built `record` for this call, so it may become the data
            (else it is copied: the item keeps its record for a rejection)."""
            if type(record) is not dict:
                return None
            identity = record.get(id_key)
            if type(identity) is str:
                if not identity or identity.isspace():
                    return None
                external_id = identity
            elif type(identity) is int:
                external_id = str(identity)
            else:
                return None
            if types:
                data = record if owned else dict(record)
                try:
                    for key, coerce_or_none in types:
                        if key in data:
                            data[key] = coerce_or_none(data[key])
                except CoercionError:
                    return None
            else:
                data = record
            title, content, author, url, published = map(data.get, paths)
            published_at = None
            if published is not None and not (type(published) is str and (not published or published.isspace())):
                try:
                    published_at = to_datetime(published)
                except CoercionError:
                    return None
            if title is not None and type(title) is not str:
                title = _as_text(title)
            if content is not None and type(content) is not str:
                content = _as_text(content)
            if author is not None and type(author) is not str:
                author = _as_text(author)
            if url is not None and type(url) is not str:
                url = _as_text(url)
            texts = {"title": title, "content": content, "author": author, "url": url}
            digest, data_json = content_of(texts, published_at, data)
            return NormalizedRecord(
                external_id, title, content, author, url, published_at, data, digest, data_json=data_json
            )

        return normalize

    def normalize_item(self, item: RawItem) -> NormalizedRecord:
        record = item.record
        if record is None:
            raise _Rejected(PARSE_ERROR, item.error or "unparsable item")
        if not isinstance(record, dict):
            raise _Rejected(PARSE_ERROR, "record is not an object")
        identity = record.get(self._id_key) if self._id_key is not None else dotted_get(record, self.id_field)
        if is_empty(identity) or isinstance(identity, (dict, list)):
            raise _Rejected(MISSING_ID, f"no usable value at id_field '{self.id_field}'", self.id_field)
        data = self._coerced(record)
        unified = {name: data.get(path) if flat else dotted_get(data, path) for name, path, flat in self._unified}
        published_at = None
        if not is_empty(unified["published_at"]):
            try:
                published_at = to_datetime(unified["published_at"])
            except CoercionError as exc:
                raise _Rejected(COERCION_FAILED, str(exc), "published_at") from None
        title, content = _as_text(unified["title"]), _as_text(unified["content"])
        author, url = _as_text(unified["author"]), _as_text(unified["url"])
        texts = {"title": title, "content": content, "author": author, "url": url}
        digest, data_json = content_of(texts, published_at, data)
        return NormalizedRecord(
            str(identity), title, content, author, url, published_at, data, digest, data_json=data_json
        )

    def _coerced(self, record: dict[str, Any]) -> dict[str, Any]:
        if not self.types:
            return record
        if self._flat_types is None:
            return self._coerced_nested(record)
        data = dict(record)
        for key, coerce_or_none in self._flat_types:
            if key in data:
                try:
                    data[key] = coerce_or_none(data[key])
                except CoercionError as exc:
                    raise _Rejected(COERCION_FAILED, str(exc), key) from None
        return data

    def _coerced_nested(self, record: dict[str, Any]) -> dict[str, Any]:
        data = dict(record)
        for path, coerce, name in self.types:
            parent = _parent_for_write(data, path)
            if parent is None or path[-1] not in parent:
                continue
            value = parent[path[-1]]
            if is_empty(value):
                parent[path[-1]] = None
                continue
            try:
                parent[path[-1]] = coerce(value)
            except CoercionError as exc:
                raise _Rejected(COERCION_FAILED, str(exc), name) from None
        return data


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
# orjson refuses to encode more than 254 levels: the data is encoded inside this many lists
# (whose brackets are then cut off), so that orjson refuses exactly the records nested
# deeper than MAX_DEPTH, at no cost to the others.
_WRAPPING = 254 - MAX_DEPTH
assert _WRAPPING == 4  # the lists around the data in content_of


def content_of(texts: dict[str, str | None], published_at: datetime | None, data: dict[str, Any]) -> tuple[bytes, str]:
    """A record's content hash and its data as JSON text, from one encoding of the data.

    The hash is the SHA-256 of the canonical JSON (sorted keys) of [texts, published_at,
    data]: orjson writes a list as its elements' encodings joined by commas, so the data's
    own encoding is hashed in place and then stored as the jsonb text (jsonb keeps no key
    order), instead of encoding the data twice. Kept as text: a retained orjson bytes
    object holds a whole page of memory.

    What orjson refuses is rejected here (nesting deeper than MAX_DEPTH, a number no
    double holds) or, for integers beyond 64 bits and lone surrogates, encoded by the
    standard library: exactly, and always the same way for the same record.
    """
    try:
        head = orjson.dumps([texts, published_at], option=_CANONICAL)  # b'[{...},null]'
        data_json = orjson.dumps([[[[data]]]], option=_CANONICAL)[_WRAPPING:-_WRAPPING]
    except orjson.JSONEncodeError:
        return _exact_content_of(texts, published_at, data)
    digest = hashlib.sha256(b"".join((head[:-1], b",", data_json, b"]"))).digest()
    return digest, data_json.decode()


def _greater(incremental: IncrementalOrder, data: dict[str, Any], greatest: Position | None) -> Position | None:
    """The greater of the record's incremental value and the chunk's greatest so far; a value
    with no place in the order rejects its record, so it can never become the checkpoint."""
    try:
        position = incremental.position(dotted_get(data, incremental.field))
        if position is None:
            return greatest
        return position if greatest is None or is_after(position, greatest) else greatest
    except UncomparableValue as exc:
        raise _Rejected(INCREMENTAL_INVALID, str(exc), incremental.field) from None


def _exact_content_of(
    texts: dict[str, str | None], published_at: datetime | None, data: dict[str, Any]
) -> tuple[bytes, str]:
    """content_of for what orjson refused: a rejection, or the standard library's encoding."""
    for key, value in data.items():
        if nesting_exceeds(value, MAX_DEPTH - 1):
            raise _Rejected(TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels", str(key))
    where = first_non_finite(data)
    if where is not None:
        raise _Rejected(NON_FINITE_NUMBER, "a number no double can hold (NaN, Infinity, or beyond ±1.8e308)", where)
    head = stdlib_dumps([texts, published_at], sort_keys=True, ensure_ascii=False)
    data_json = stdlib_dumps(data, sort_keys=True, ensure_ascii=False)
    # surrogatepass: a lone surrogate is hashed here; the database refuses it later (upsert/isolation.py)
    encoded = "".join((head[:-1], ",", data_json, "]")).encode("utf-8", "surrogatepass")
    return hashlib.sha256(encoded).digest(), data_json


def _is_flat(path: str) -> bool:
    """A top-level key: dotted_get(obj, path) is then obj.get(path) for a dict."""
    return path != "" and "." not in path


def _parent_for_write(data: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    """The dict holding the last path element, copied on the way so the raw stays intact."""
    parent = data
    for part in path[:-1]:
        child = parent.get(part)
        if not isinstance(child, dict):
            return None
        child = dict(child)
        parent[part] = child
        parent = child
    return parent


def _as_text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    if isinstance(value, (dict, list)):
        return exact_json.dumps(value).decode().lstrip()  # lstrip: the fallback's mark
    return str(value)
