"""The http_json connector: JSON records from an API (paginated) or a local JSON file.

The first request is made eagerly, inside extract(), because only it can say "not
modified" (304, or an unchanged file hash) and only it carries the validators to store.
Every later page is fetched lazily, as the items are consumed. A body is never held
whole: it is spooled to a temporary file (a local file is read in place) and its records
are read one at a time (workers/sources/json_records.py), so worker memory stays bounded
by the chunk size whatever the size of a document. Only a source whose records cannot be
read that way (json_records.streamable) has each document parsed whole.

A paginated walk offers a Boundary after every page that has a next one: a fetch
segment may stop there and a later task go on with extract(..., resume=position), which
starts with a plain GET of the next page (the validators of the first page are the run's,
kept by the fetch stage). The position holds that request, the pages and items read so
far (max_pages and the items' positions hold across segments) and the paginator's own
state (pagination.py). A local file and an unpaginated document are read in one segment:
they offer no Boundary, and max_response_bytes caps each of them as it caps one page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from typing import Any

from app.core import exact_json
from app.core.sources_config import SourceConfig
from workers.sources.base import Boundary, Extraction, FetchState, PermanentError, RawItem, dotted_get
from workers.sources.document import source_is_local
from workers.sources.files import capped_chunks, digest_file, local_path
from workers.sources.http import HttpFetcher, SpooledResponse, describe_url
from workers.sources.json_records import JsonRecords, Rejected, streamable
from workers.sources.pagination import PageRequest, Paginator, paginator_for


def extract(
    source: SourceConfig,
    state: FetchState,
    fetcher: HttpFetcher | None = None,
    resume: dict[str, Any] | None = None,
) -> Extraction:
    """Open the source; items are RawItem per element of the record list, page after page."""
    if source_is_local(source):
        # A local file is one document: pagination and since_param have nothing to act on.
        if resume is not None:  # it offers no Boundary, so no segment of its run stops mid-way
            raise PermanentError("a local JSON file is read in one segment; it cannot resume mid-way")
        assert source.url is not None
        path = local_path(source.url)
        digest = digest_file(path, source.max_response_bytes)
        if state.file_hash is not None and digest.sha256 == state.file_hash:
            return Extraction(items=iter(()), not_modified=True)
        reader = records_reader(source, capped_chunks(path, source.max_response_bytes), str(path))
        return Extraction(items=items_of(reader, first_position=1), new_state={"file_hash": digest.sha256})

    owned = fetcher is None
    active = fetcher or HttpFetcher.for_source(source)
    try:
        paginator = paginator_for(source)
        assert source.url is not None
        if resume is None:
            walk = WalkPosition(paginator.first(source.url, base_params(source, state)), pages=0, items=0)
            page = active.get_spooled(
                walk.request.url, walk.request.params, source.resolved_headers(),
                etag=state.etag, last_modified=state.last_modified,
            )
        else:
            walk = WalkPosition.resumed(resume, paginator)
            page = _follow_up(active, walk.request, source.resolved_headers())
    except BaseException:
        if owned:
            active.close()
        raise
    if page.head.not_modified:
        page.close()
        if owned:
            active.close()
        return Extraction(items=iter(()), not_modified=True)
    final_progress: dict[str, Any] = {}
    items = _walk(source, active, paginator, walk, page, close_fetcher=owned, progress=final_progress)
    # A resumed walk learns no validators: the first segment's are kept (runs.fetch_state).
    return Extraction(items=items, new_state={} if resume is not None else page.head.validators(),
                      final_progress=final_progress)


@dataclass(frozen=True, slots=True)
class WalkPosition:
    """Where a page walk stands before `request`: pages and items read so far."""

    request: PageRequest
    pages: int
    items: int

    def position(self, paginator: Paginator) -> dict[str, Any]:
        """The JSON-able resume position (a Boundary's), with the paginator's state."""
        return {"request": self.request.position(), "pages": self.pages, "items": self.items,
                "paginator": paginator.position()}

    @classmethod
    def resumed(cls, position: dict[str, Any], paginator: Paginator) -> WalkPosition:
        """The walk `position` describes, `paginator` put back in its state."""
        try:
            paginator.resume(position["paginator"])
            return cls(PageRequest.resume(position["request"]), int(position["pages"]), int(position["items"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PermanentError(f"cannot resume the page walk from its stored position ({exc!r})") from None


def base_params(source: SourceConfig, state: FetchState) -> dict[str, Any]:
    """Query parameters sent on every page: the checkpoint under since_param, once there is one."""
    if source.since_param and state.checkpoint is not None:
        return {source.since_param: _as_query_value(state.checkpoint)}
    return {}


def _as_query_value(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _walk(
    source: SourceConfig,
    fetcher: HttpFetcher,
    paginator: Paginator,
    walk: WalkPosition,
    page: SpooledResponse,
    *,
    close_fetcher: bool,
    progress: dict[str, Any],
) -> Iterator[RawItem | Boundary]:
    headers = source.resolved_headers()
    request, pages, position = walk.request, walk.pages + 1, walk.items + 1
    try:
        while True:
            reader = records_reader(source, page.chunks(), describe_url(page.head.url))
            before = position
            for item in items_of(reader, first_position=position):
                position += 1
                yield item
            page.close()
            following = paginator.next(request, reader.rest, position - before, page.head)
            if following is None:
                progress.update(pages=pages, items=position - 1)  # the walk's last progress
                return
            if pages >= source.max_pages:
                raise PermanentError(
                    f"{describe_url(page.head.url)}: more than max_pages={source.max_pages} pages; "
                    "is the pagination terminating?"
                )
            here = WalkPosition(following, pages=pages, items=position - 1)
            # position() is called only while this generator waits at the yield, so the
            # paginator's state it reads is the state after this page.
            yield Boundary(partial(here.position, paginator), {"pages": pages, "items": position - 1})
            request, pages = following, pages + 1
            page = _follow_up(fetcher, request, headers)
    finally:
        page.close()
        if close_fetcher:
            fetcher.close()


def _follow_up(fetcher: HttpFetcher, request: PageRequest, headers: dict[str, str]) -> SpooledResponse:
    """A page after the first: a plain GET (only the first request is conditional, so a 304
    here is a broken server)."""
    page = fetcher.get_spooled(request.url, request.params, headers)
    if page.head.not_modified:
        page.close()
        raise PermanentError(f"{describe_url(page.head.url)}: unexpected 304 Not Modified for a follow-up page")
    return page


class WholeDocument:
    """The records of a document parsed whole, for sources json_records cannot stream;
    the same interface as JsonRecords (`rest` is the whole body)."""

    def __init__(self, chunks: Iterable[bytes], records_path: str, where: str):
        self._chunks = chunks
        self._records_path = records_path
        self._where = where
        self.rest: Any = None

    def __iter__(self) -> Iterator[Any]:
        self.rest = parse_json(b"".join(self._chunks), self._where)
        for element in records_in(self.rest, self._records_path, self._where):
            if isinstance(element, dict):
                yield element
            else:
                yield Rejected("not an object", json.dumps(element, ensure_ascii=False))


def records_reader(source: SourceConfig, chunks: Iterable[bytes], where: str) -> JsonRecords | WholeDocument:
    """How the source's documents are read: record by record when they can be, else whole."""
    if streamable(source.records_path, source.pagination, source.next_cursor_path):
        return JsonRecords(chunks, source.records_path, where)
    return WholeDocument(chunks, source.records_path, where)


def parse_json(body: bytes, where: str) -> Any:
    """The decoded body, exactly (big integers as ints, numbers no double holds as NonFinite,
    for the normaliser to reject); anything unparsable is permanent (retrying returns the
    same bytes)."""
    try:
        return exact_json.loads(body)
    except json.JSONDecodeError as exc:
        raise PermanentError(f"{where}: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise PermanentError(f"{where}: malformed JSON: not UTF-8/16/32 text ({exc.reason})") from None
    except RecursionError:
        raise PermanentError(f"{where}: malformed JSON: nested too deeply") from None


def records_in(body: Any, records_path: str, where: str) -> list[Any]:
    """The record list at records_path; a single object counts as one record."""
    value = dotted_get(body, records_path)
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    if value is None and records_path:
        raise PermanentError(f"{where}: records_path {records_path!r} not found in the response")
    raise PermanentError(
        f"{where}: records_path {records_path!r} holds a {type(value).__name__}, not a list of records"
    )


def items_of(elements: Iterable[Any], *, first_position: int) -> Iterator[RawItem]:
    """One RawItem per element (a record, or a Rejected kept as a rejection with its JSON text)."""
    for position, element in enumerate(elements, start=first_position):
        if isinstance(element, Rejected):
            yield RawItem(record=None, line=position, error=element.reason, raw_text=element.raw_text)
        else:
            yield RawItem(record=element, line=position)
