"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

The signed content is "{webhook-id}.{webhook-timestamp}.{raw body}", signed with
HMAC-SHA256 under the secret's key; `webhook-signature` holds space-separated
"v1,<base64>" entries (several during key rotation). Secrets are written
`whsec_<base64 key>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

TOLERANCE_S = 5 * 60


class SignatureError(Exception):
    """The delivery is not authentic or not fresh; the message is safe to return."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (a secret without the prefix is used as is)."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("webhook secret is not valid base64 after 'whsec_'") from None
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value a sender would send."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    *,
    webhook_id: str | None,
    timestamp: str | None,
    signature_header: str | None,
    body: bytes,
    now: float | None = None,
) -> None:
    """Raise SignatureError unless the headers prove the body came from the secret's holder."""
    if not webhook_id or not timestamp or not signature_header:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if len(webhook_id) > 200:
        raise SignatureError("webhook-id is too long")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > TOLERANCE_S:
        raise SignatureError("webhook-timestamp is outside the 5-minute tolerance")
    expected = sign(secret, webhook_id, sent_at, body).split(",", 1)[1].encode()
    for entry in signature_header.split():
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise SignatureError("no valid v1 signature")
