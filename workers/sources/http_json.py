"""The http_json connector: JSON records from an API (paginated) or a local JSON file.

The first request is made eagerly, inside extract(), because only it can say "not
modified" (304, or an unchanged file hash) and only it carries the validators to store.
Every later page is fetched lazily, as the items are consumed, so a source of any size
is held in memory one page at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from app.core import exact_json
from app.core.sources_config import SourceConfig
from workers.sources.base import Extraction, FetchState, PermanentError, RawItem, dotted_get
from workers.sources.document import Document, open_local, open_remote, source_is_local
from workers.sources.http import FetchedResponse, HttpFetcher, describe_url
from workers.sources.pagination import PageRequest, Paginator, paginator_for


def extract(source: SourceConfig, state: FetchState, fetcher: HttpFetcher | None = None) -> Extraction:
    """Open the source; items are RawItem per element of the record list, page after page."""
    if source_is_local(source):
        # A local file is one document: pagination and since_param have nothing to act on.
        document = open_local(source, state)
        if document.not_modified:
            return Extraction(items=iter(()), not_modified=True)
        records = records_in(parse_json(document.body, document.where), source.records_path, document.where)
        return Extraction(items=items_of(records, first_position=1), new_state=document.new_state)

    owned = fetcher is None
    active = fetcher or HttpFetcher.for_source(source)
    try:
        paginator = paginator_for(source)
        assert source.url is not None
        first = paginator.first(source.url, base_params(source, state))
        document = open_remote(source, state, active, first.params)
    except BaseException:
        if owned:
            active.close()
        raise
    if document.not_modified:
        if owned:
            active.close()
        return Extraction(items=iter(()), not_modified=True)
    items = _walk(source, active, paginator, first, document, close_fetcher=owned)
    return Extraction(items=items, new_state=document.new_state)


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
    request: PageRequest,
    document: Document,
    *,
    close_fetcher: bool,
) -> Iterator[RawItem]:
    headers = source.resolved_headers()
    response = document.response
    assert response is not None
    body, where = parse_json(document.body, document.where), document.where
    position, pages = 1, 1
    try:
        while True:
            records = records_in(body, source.records_path, where)
            yield from items_of(records, first_position=position)
            position += len(records)
            following = paginator.next(request, body, len(records), response)
            if following is None:
                return
            if pages >= source.max_pages:
                raise PermanentError(
                    f"{where}: more than max_pages={source.max_pages} pages; is the pagination terminating?"
                )
            request, pages = following, pages + 1
            response = fetcher.get(request.url, request.params, headers)
            body, where = _page_body(response)
    finally:
        if close_fetcher:
            fetcher.close()


def _page_body(response: FetchedResponse) -> tuple[Any, str]:
    where = describe_url(response.url)
    if response.not_modified:  # only the first request is conditional; a 304 later is a broken server
        raise PermanentError(f"{where}: unexpected 304 Not Modified for a follow-up page")
    return parse_json(response.body, where), where


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


def items_of(records: list[Any], *, first_position: int) -> Iterator[RawItem]:
    """One RawItem per element; a non-object element is kept as a rejection with its JSON text."""
    for offset, element in enumerate(records):
        position = first_position + offset
        if isinstance(element, dict):
            yield RawItem(record=element, line=position)
        else:
            raw = json.dumps(element, ensure_ascii=False)
            yield RawItem(record=None, line=position, error="not an object", raw_text=raw)
