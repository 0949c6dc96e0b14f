"""How to get from one page of an http_json source to the next: none | page | offset | cursor | link.

Each style is a small object with the same methods, so the page walk in http_json
stays one loop. Styles that follow server-given pointers (cursor, link) remember the
pointers followed: a server handing out the same one twice would otherwise loop forever,
silently re-ingesting the same records until max_pages.

A walk may stop between two pages and go on in another task (a fetch segment,
workers/pipeline/fetch/segment.py): `position()` is what a style must remember across
that gap (JSON-able), and `resume(position)` puts a fresh paginator back in that state.
Page and offset styles carry everything in the next request itself; cursor and link
carry the parameters sent on every page and their loop-detection memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin

from app.core.sources_config import SourceConfig
from workers.sources.base import PermanentError, dotted_get
from workers.sources.http import FetchedResponse


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Where to GET one page: the url and its query parameters."""

    url: str
    params: dict[str, Any]

    def position(self) -> dict[str, Any]:
        """JSON-able, for a walk that stops here and goes on in another task."""
        return {"url": self.url, "params": dict(self.params)}

    @classmethod
    def resume(cls, position: dict[str, Any]) -> PageRequest:
        return cls(str(position["url"]), dict(position["params"]))


class Paginator(Protocol):
    def first(self, url: str, base_params: dict[str, Any]) -> PageRequest:
        """The request for the first page; `base_params` go on every request."""
        ...

    def next(self, current: PageRequest, body: Any, count: int, response: FetchedResponse) -> PageRequest | None:
        """The request for the page after `current`, or None when `current` was the last."""
        ...

    def position(self) -> dict[str, Any]:
        """The state a walk stopped between two pages needs to go on (JSON-able)."""
        ...

    def resume(self, position: dict[str, Any]) -> None:
        """Take up the state `position()` gave, in place of first()."""
        ...


class _Stateless:
    """Styles whose next request follows from the current one alone."""

    __slots__ = ()

    def position(self) -> dict[str, Any]:
        return {}

    def resume(self, position: dict[str, Any]) -> None:
        pass


# How many pointers a cursor or link walk remembers to detect a loop. Bounded, because a
# walk of millions of pages must not grow without end in memory nor in the resume position
# committed with every segment (runs.fetch_position): a server that loops back to a pointer
# more than this many pages old is not caught here, and max_pages still ends its walk.
REMEMBERED_POINTERS = 10_000


class RecentPointers:
    """The most recent REMEMBERED_POINTERS pointers followed, oldest first (a dict keeps order)."""

    __slots__ = ("_recent", "limit")

    def __init__(self, pointers: Iterable[str] = (), limit: int = REMEMBERED_POINTERS):
        self.limit = limit
        self._recent: dict[str, None] = {}
        for pointer in pointers:
            self.add(pointer)

    def __contains__(self, pointer: object) -> bool:
        return pointer in self._recent

    def __len__(self) -> int:
        return len(self._recent)

    def add(self, pointer: str) -> None:
        self._recent.pop(pointer, None)
        self._recent[pointer] = None
        if len(self._recent) > self.limit:
            del self._recent[next(iter(self._recent))]

    def as_list(self) -> list[str]:
        return list(self._recent)


@dataclass(slots=True)
class NoPagination(_Stateless):
    def first(self, url: str, base_params: dict[str, Any]) -> PageRequest:
        return PageRequest(url, dict(base_params))

    def next(self, current: PageRequest, body: Any, count: int, response: FetchedResponse) -> PageRequest | None:
        return None


@dataclass(slots=True)
class PageNumber(_Stateless):
    """?page=N&per_page=S; a short or empty page is the last one."""

    page_param: str
    size_param: str
    page_size: int
    start_page: int

    def first(self, url: str, base_params: dict[str, Any]) -> PageRequest:
        return PageRequest(url, {**base_params, self.page_param: self.start_page, self.size_param: self.page_size})

    def next(self, current: PageRequest, body: Any, count: int, response: FetchedResponse) -> PageRequest | None:
        if count < self.page_size:
            return None
        return PageRequest(current.url, {**current.params, self.page_param: int(current.params[self.page_param]) + 1})


@dataclass(slots=True)
class Offset(_Stateless):
    """?offset=O&limit=L; a short or empty page is the last one."""

    offset_param: str
    limit_param: str
    page_size: int

    def first(self, url: str, base_params: dict[str, Any]) -> PageRequest:
        return PageRequest(url, {**base_params, self.offset_param: 0, self.limit_param: self.page_size})

    def next(self, current: PageRequest, body: Any, count: int, response: FetchedResponse) -> PageRequest | None:
        if count < self.page_size:
            return None
        offset = int(current.params[self.offset_param]) + count
        return PageRequest(current.url, {**current.params, self.offset_param: offset})


@dataclass(slots=True)
class Cursor:
    """?cursor=C with C read from each body at `next_cursor_path`; null or "" ends the walk."""

    cursor_param: str
    next_cursor_path: str
    _base: dict[str, Any] = field(default_factory=dict)
    _seen: RecentPointers = field(default_factory=RecentPointers)

    def first(self, url: str, base_params: dict[str, Any]) -> PageRequest:
        self._base = dict(base_params)
        return PageRequest(url, dict(base_params))

    def position(self) -> dict[str, Any]:
        return _pointer_walk_position(self._base, self._seen)

    def resume(self, position: dict[str, Any]) -> None:
        self._base, self._seen = _pointer_walk_resumed(position)

    def next(self, current: PageRequest, body: Any, count: int, response: FetchedResponse) -> PageRequest | None:
        value = dotted_get(body, self.next_cursor_path)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise PermanentError(
                f"next cursor at {self.next_cursor_path!r} is a {type(value).__name__}, not a string or number"
            )
        cursor = str(value)
        if cursor in self._seen:
            raise PermanentError(f"pagination loop: cursor {_short(cursor)!r} was returned twice")
        self._seen.add(cursor)
        return PageRequest(current.url, {**self._base, self.cursor_param: cursor})


@dataclass(slots=True)
class LinkHeader:
    """Follow the RFC 8288 `Link: <url>; rel="next"` header until there is none."""

    _base: dict[str, Any] = field(default_factory=dict)
    _seen: RecentPointers = field(default_factory=RecentPointers)

    def first(self, url: str, base_params: dict[str, Any]) -> PageRequest:
        self._base = dict(base_params)
        return PageRequest(url, dict(base_params))

    def position(self) -> dict[str, Any]:
        return _pointer_walk_position(self._base, self._seen)

    def resume(self, position: dict[str, Any]) -> None:
        self._base, self._seen = _pointer_walk_resumed(position)

    def next(self, current: PageRequest, body: Any, count: int, response: FetchedResponse) -> PageRequest | None:
        self._seen.add(response.url)
        target = _next_link(response)
        if target is None:
            return None
        target = urljoin(response.url, target)
        if target in self._seen:
            raise PermanentError(f"pagination loop: Link rel=next points back to {_short(target)!r}")
        self._seen.add(target)
        # The link usually repeats the query already; base params (since) are re-applied in case it does not.
        return PageRequest(target, dict(self._base))


def _pointer_walk_position(base: dict[str, Any], seen: RecentPointers) -> dict[str, Any]:
    return {"base": dict(base), "seen": seen.as_list()}


def _pointer_walk_resumed(position: dict[str, Any]) -> tuple[dict[str, Any], RecentPointers]:
    return dict(position["base"]), RecentPointers(str(pointer) for pointer in position["seen"])


def _next_link(response: FetchedResponse) -> str | None:
    for link in response.links.values():
        if "next" in link.get("rel", "").lower().split() and link.get("url"):
            return link["url"]
    return None


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def paginator_for(source: SourceConfig) -> Paginator:
    """A fresh paginator (cursor and link styles carry per-walk state) for the source's style."""
    if source.pagination == "page":
        return PageNumber(source.page_param, source.size_param, source.page_size, source.start_page)
    if source.pagination == "offset":
        return Offset(source.offset_param, source.limit_param, source.page_size)
    if source.pagination == "cursor":
        return Cursor(source.cursor_param, source.next_cursor_path)
    if source.pagination == "link":
        return LinkHeader()
    return NoPagination()
