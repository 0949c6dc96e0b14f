"""API keys: `X-API-Key: <key>` or `Authorization: Bearer <key>`, checked against
`API_KEYS` entries (plain, or `sha256:<hex>` of the key) in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key the client sent, if any (X-API-Key wins over Authorization)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip() or None
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def fingerprint(entry: str) -> str:
    """A stable, non-reversible name for a configured key (rate-limit bucket, scoping)."""
    return hashlib.sha256(entry.encode()).hexdigest()[:24]


def match_api_key(entries: list[str], presented: str | None) -> str | None:
    """Return the fingerprint of the entry that matches, else None. Compares every entry."""
    if not presented or not entries:
        return None
    presented_sha = hashlib.sha256(presented.encode()).hexdigest()
    matched: str | None = None
    for entry in entries:
        if entry.startswith("sha256:"):
            expected = entry[len("sha256:") :].strip().lower()
        else:
            # Hash the plain entry too, so both sides have equal length (no length leak).
            expected = hashlib.sha256(entry.encode()).hexdigest()
        if hmac.compare_digest(presented_sha.encode(), expected.encode()) and matched is None:
            matched = fingerprint(entry)
    return matched
