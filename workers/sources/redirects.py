"""Which redirects a source's requests follow, and which requests carry the source's headers.

A source's configured headers usually carry a secret (`${VAR}`), and an upstream decides
where the next request goes (a redirect, a `Link: rel="next"` page). So the configured
headers go only to the source's own origin (the scheme, host and port of its `url`;
`http` may move up to `https` on the same host), never to another host, listed or not:
listing a CDN in `redirect_hosts` lets the source read from it, not hand it the API
token. A redirect is followed only within the origin of the request it answers, to the
source's origin, or to a host in `redirect_hosts`. Other schemes (`file:`, `ftp:`, ...)
and a step down from https to http are never followed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from workers.sources.base import PermanentError

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_FOLLOWED_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_key(host: str | bytes) -> str:
    """A host as compared here: IDNA-encoded, lowercase, without IPv6 brackets."""
    text = host.decode("ascii") if isinstance(host, bytes) else host
    text = text.strip().lower().strip("[]").rstrip(".")
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return text


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int | None

    @classmethod
    def of(cls, url: httpx.URL) -> Origin:
        scheme = url.scheme.lower()
        return cls(scheme, host_key(url.raw_host), url.port or _DEFAULT_PORTS.get(scheme))

    def admits(self, other: Origin) -> bool:
        """Same origin, or this http origin moved up to https on its default ports."""
        if other == self:
            return True
        upgrade = (self.scheme, self.port, other.scheme, other.port) == ("http", 80, "https", 443)
        return upgrade and other.host == self.host


@dataclass(frozen=True, slots=True)
class Hop:
    """Where a redirect leads, and whether the configured headers go there."""

    url: httpx.URL
    with_headers: bool


@dataclass(frozen=True, slots=True)
class RedirectPolicy:
    """A source's own origin (`home`: where its headers go; each request's own origin when
    None) and the other hosts that redirects may lead to (`redirect_hosts`)."""

    home: Origin | None = None
    allowed_hosts: frozenset[str] = frozenset()
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def for_source(cls, url: str | None, hosts: Iterable[str]) -> RedirectPolicy:
        try:
            home = Origin.of(httpx.URL(url)) if url else None
        except httpx.InvalidURL:
            home = None
        return cls(home=home, allowed_hosts=frozenset(host_key(host) for host in hosts))

    def sends_headers(self, start: httpx.URL, target: httpx.URL) -> bool:
        """Whether the configured headers go to `target`, in a request that began at `start`."""
        home = self.home or Origin.of(start)
        return home.admits(Origin.of(target))

    def follow(self, start: httpx.URL, current: httpx.URL, location: str, where: str) -> Hop:
        """The next hop of a chain that began at `start` and is now at `current`.

        Raises PermanentError naming the target host (never its path or query, which may
        hold a token) when the hop is refused.
        """
        try:
            target = current.join(location)
        except httpx.InvalidURL:
            raise PermanentError(f"GET {where}: redirect to an invalid URL refused") from None
        scheme = target.scheme.lower()
        if scheme not in _FOLLOWED_SCHEMES:
            shown = "".join(ch for ch in scheme[:20] if ch.isalnum() or ch in "+-.") or "(none)"
            raise PermanentError(f"GET {where}: redirect to a {shown}: URL refused; only http and https are followed")
        destination = Origin.of(target)
        if current.scheme.lower() == "https" and scheme == "http":
            raise PermanentError(
                f"GET {where}: redirect to {destination.host} refused: it steps down from https to http"
            )
        with_headers = self.sends_headers(start, target)
        if with_headers or Origin.of(start).admits(destination) or destination.host in self.allowed_hosts:
            return Hop(target, with_headers)
        raise PermanentError(
            f"GET {where}: redirect to {destination.host} refused: another host than the source's; "
            "list it in the source's redirect_hosts to follow it (its headers are not sent there)"
        )


def redirect_location(response: httpx.Response) -> str | None:
    """The Location of a redirect to follow, or None for any other response."""
    if response.status_code not in REDIRECT_STATUSES:
        return None
    return response.headers.get("location") or None
