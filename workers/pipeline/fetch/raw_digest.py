"""Raw digests: a short fingerprint of one upstream record as the fetch stage read it.

A record stored with the digest of the raw row it was made from can be recognised on a
re-run before anything is done with it: same digest, same record. The digest therefore
covers everything that decides what a raw row becomes:

- the row itself (its orjson encoding, keys in upstream order);
- the source settings the normaliser reads (kind, id_field, fields, types);
- the normalising code itself (the source of normalize/normalizer.py and normalize/coerce.py), so that a
  deployment that changes how rows are coerced re-normalises every row once, without
  anyone having to remember to bump a version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from app.core.sources_config import SourceConfig
from app.core.text import NUL, stored_key
from workers.sources.base import RawItem, RowBatch, dotted_get

DIGEST_BYTES = 16  # 128 bits: collisions are out of reach for any number of rows we will see
_NORMALISING_CODE = ("normalizer.py", "coerce.py")  # in workers/pipeline/normalize/


def _code_fingerprint() -> bytes:
    here = Path(__file__).parents[1] / "normalize"
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for name in _NORMALISING_CODE:
        digest.update((here / name).read_bytes())
    return digest.digest()


_CODE = _code_fingerprint()


def config_fingerprint(source: SourceConfig) -> bytes:
    """What, besides the row, decides the normalised record."""
    settings = {"kind": source.kind, "id_field": source.id_field, "fields": source.fields, "types": source.types}
    return hashlib.blake2b(
        _CODE + orjson.dumps(settings, option=orjson.OPT_SORT_KEYS), digest_size=DIGEST_BYTES
    ).digest()


class RowDigester:
    """Keys and digests of one source's raw items.

    A tabular row given as values (RawItem.values) is digested as its columns followed by
    its values, never as a dict: the dict would be built only to be hashed. The two forms
    never give the same digest (a JSON list vs a JSON object), so a source that changes
    form re-normalises its rows once, and never mistakes one row for another.
    """

    def __init__(self, source: SourceConfig):
        # The fingerprint is hashed once; each row continues a copy of that state.
        self._seeded = hashlib.blake2b(config_fingerprint(source), digest_size=DIGEST_BYTES)
        id_field = source.id_field or "id"
        self._id_key = id_field if id_field and "." not in id_field else None
        self._id_field = id_field
        # For rows given as values: the state seeded with their columns, and where the id is.
        self._columns: list[str] | None = None
        self._with_columns = self._seeded
        self._id_index: int | None = None

    def key(self, item: RawItem) -> str | None:
        """The external id the normaliser will give this item's record, as stored; None when
        the id is anything but a usable string or integer (the normaliser then decides)."""
        values = item.values
        if values is not None:
            self._use_columns(item.columns)
            identity: Any = values[self._id_index] if self._id_index is not None else None
        else:
            record = item.record
            if type(record) is not dict:
                return None
            identity = record.get(self._id_key) if self._id_key is not None else dotted_get(record, self._id_field)
        if type(identity) is str:
            return _usable_key(identity)
        if type(identity) is int:
            return str(identity)
        return None

    def digest(self, item: RawItem) -> bytes | None:
        """The item's digest; None for a rejection or a record orjson cannot encode as it stands
        (never recognised, always normalised)."""
        values = item.values
        if values is not None:
            self._use_columns(item.columns)
            digest = self._with_columns.copy()
            digest.update(orjson.dumps(values))
            return digest.digest()
        record = item.record
        if type(record) is not dict:
            return None
        try:
            encoded = orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            return None
        digest = self._seeded.copy()
        digest.update(encoded)
        return digest.digest()

    def tabular(self, batch: RowBatch) -> tuple[list[str | None], list[bytes]]:
        """The keys and digests of a batch's good rows, one each, in order: what key() and
        digest() give for each row as a TabularRow, at a fraction of the cost per row."""
        self._use_columns(batch.columns)
        copy, dumps = self._with_columns.copy, orjson.dumps

        def digest_of(values: list[str]) -> bytes:
            digest = copy()
            digest.update(dumps(values))
            return digest.digest()

        digests = list(map(digest_of, batch.values))
        index = self._id_index
        if index is None:
            return [None] * len(digests), digests
        keys: list[str | None] = [values[index] for values in batch.values]
        # One check of the whole batch usually clears every id (see _usable_key).
        if not all(keys) or any(map(str.isspace, keys)) or NUL in "".join(keys):  # type: ignore[arg-type]
            keys = [_usable_key(key) for key in keys]  # type: ignore[arg-type]
        return keys, digests

    def _use_columns(self, columns: list[str] | None) -> None:
        """Seed the state for rows of these columns: once per file, whose rows share one list."""
        if columns is self._columns:
            return
        assert columns is not None
        self._columns = columns
        self._with_columns = self._seeded.copy()
        self._with_columns.update(orjson.dumps(columns))
        # A dotted id_field is a path, never a column's name: the normaliser follows it
        # (dotted_get), and in a row of strings it leads nowhere, so such rows have no key.
        id_key = self._id_key
        self._id_index = columns.index(id_key) if id_key is not None and id_key in columns else None


def _usable_key(identity: str) -> str | None:
    """A string id as the records table stores it (stored_key); None when empty or blank."""
    if not identity or identity.isspace():
        return None
    return stored_key(identity)
