"""Text as PostgreSQL stores it: `text` and `jsonb` cannot hold NUL, so a NUL is replaced
by U+FFFD (the replacement character) on the way in."""

from __future__ import annotations

NUL = "\x00"
REPLACEMENT = "\ufffd"


def stored_key(external_id: str) -> str:
    """The external id as the records table holds it (records.external_id): NUL replaced.

    The fetch stage's row keys (workers/pipeline/fetch/raw_digest.py) must be exactly this,
    or rows stored unchanged would no longer be recognised."""
    return external_id.replace(NUL, REPLACEMENT) if NUL in external_id else external_id
