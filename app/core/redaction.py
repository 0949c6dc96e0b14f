"""Redaction: the one way a secret is kept out of a message before it is logged, stored
in runs.error or returned."""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "[redacted]"
_MIN_SECRET_CHARS = 4  # shorter values are not secrets, and redacting them would garble messages


def redact(message: str, secrets: Iterable[str]) -> str:
    """Replace every secret (and every long word of a multi-word secret, e.g. a Bearer token) in a message."""
    for secret in sorted(_secret_variants(secrets), key=len, reverse=True):
        message = message.replace(secret, REDACTED)
    return message


def _secret_variants(secrets: Iterable[str]) -> set[str]:
    variants: set[str] = set()
    for secret in secrets:
        for candidate in (secret, *secret.split()):
            if len(candidate) >= _MIN_SECRET_CHARS:
                variants.add(candidate)
    return variants
