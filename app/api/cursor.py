"""Opaque keyset cursors for GET /data.

A cursor is `base64url(JSON {"v", "after", "f"}) "." base64url(MAC)`: `after` is the
last id served, `f` a fingerprint of the filters it was issued for. The MAC (keyed
BLAKE2b) detects any edit; it is a checksum with a fixed key, not a secret signature,
because a forged cursor could only name a position the client may ask for anyway.
Binding the filters catches a client that changes them mid-walk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import datetime

import orjson

_KEY = b"ingest-data-cursor-v1"
_MAX_ID = 2**63 - 1
MAX_CURSOR_LENGTH = 512


class InvalidCursor(ValueError):
    """The cursor was not issued by us, was edited, or belongs to other filters."""


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(payload: str) -> bytes:
    return hashlib.blake2b(payload.encode(), key=_KEY, digest_size=12).digest()


def filters_fingerprint(*, sources: list[str], q: str | None, since: datetime | None, until: datetime | None) -> str:
    """A short, stable digest of the filters a cursor walks."""
    canonical = orjson.dumps(
        [sorted(set(sources)), q, since.isoformat() if since else None, until.isoformat() if until else None]
    )
    return hashlib.blake2b(canonical, digest_size=6).hexdigest()


def encode_cursor(*, after_id: int, fingerprint: str) -> str:
    """The cursor that resumes after `after_id` under these filters."""
    payload = _b64e(orjson.dumps({"v": 1, "after": after_id, "f": fingerprint}))
    return f"{payload}.{_b64e(_mac(payload))}"


def decode_cursor(token: str, *, fingerprint: str) -> int:
    """The id to resume after; InvalidCursor with a reason otherwise."""
    if len(token) > MAX_CURSOR_LENGTH or token.count(".") != 1:
        raise InvalidCursor("cursor is malformed")
    payload, mac = token.split(".")
    try:
        given_mac = _b64d(mac)
        body = orjson.loads(_b64d(payload))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidCursor("cursor is malformed") from None
    if not hmac.compare_digest(given_mac, _mac(payload)):
        raise InvalidCursor("cursor was modified or not issued by this API")
    if not isinstance(body, dict) or set(body) != {"v", "after", "f"} or body["v"] != 1:
        raise InvalidCursor("cursor version is not supported")
    after = body["after"]
    if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= _MAX_ID:
        raise InvalidCursor("cursor is malformed")
    if body["f"] != fingerprint:
        raise InvalidCursor("cursor was issued for different filters (source/q/since/until); start without a cursor")
    return after
