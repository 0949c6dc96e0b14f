"""GET /data and GET /data/{id}: the unified records, filtered and paginated.

Default order is id ascending. `page` pages by OFFSET; `cursor` pages by keyset
(`id > last`), which stays fast at any depth. `total` never counts the whole table:
without text/time filters it sums the maintained per-source counts; with them it counts
at most EXACT_TOTAL_CAP + 1 rows and above that falls back to the planner's estimate.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from app.api.cursor import MAX_CURSOR_LENGTH, InvalidCursor, decode_cursor, encode_cursor, filters_fingerprint
from app.api.deps import ReadConnectionDep
from app.api.errors import ApiError
from app.api.responses import COMMON_ERRORS, error_responses
from app.api.schemas import NO_NUL, DataPage, Record, SourceFilter
from app.db.session import fetch

router = APIRouter(tags=["data"])

EXACT_TOTAL_CAP = 100_000
MAX_ID = 2**63 - 1
_TOTAL = "maintained_total"  # the extra column fetch_page may read with the page
# The API shape straight from PostgreSQL: content_hash as hex costs no Python per row.
RECORD_COLUMNS = (
    "id, source, external_id, title, content, author, url, published_at, data, encode(content_hash, 'hex')"
    " AS content_hash, first_seen_at, updated_at"
)


def _iso_utc(column: str) -> str:
    """SQL rendering a timestamptz exactly as the API always wrote timestamps (Python's
    isoformat in UTC): 6-digit microseconds unless they are zero, then none, and `+00:00`.
    PostgreSQL's own JSON rendering trims trailing zeros and follows the session's TimeZone."""
    return (
        f"replace(to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '')"
        f" || '+00:00' AS {column}"
    )


# The same columns as GET /data renders them in PostgreSQL (row_to_json of these).
PAGE_COLUMNS = (
    "id, source, external_id, title, content, author, url, "
    f"{_iso_utc('published_at')}, data, encode(content_hash, 'hex') AS content_hash, "
    f"{_iso_utc('first_seen_at')}, {_iso_utc('updated_at')}"
)


def _utc(value: datetime | None) -> datetime | None:
    """Naive timestamps are taken as UTC. An instant outside what a datetime can hold in UTC
    (0001-01-01T00:00+01:00 is in year 0) is clamped to the nearest end of that range: it is
    before (or after) every record, so the filter means the same, and the driver can send it."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)
    except OverflowError:
        offset = value.utcoffset()
        ahead_of_utc = offset is not None and offset > timedelta(0)
        return (datetime.min if ahead_of_utc else datetime.max).replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class RecordFilter:
    """The filters of one /data request, rendered as fixed SQL fragments with bind values."""

    sources: list[str]
    q: str | None
    since: datetime | None
    until: datetime | None

    @property
    def scans_records(self) -> bool:
        """True when the total needs the records table (else source_stats answers)."""
        return bool(self.q or self.since or self.until)

    def where(self, params: list[Any], *, after_id: int | None = None) -> str:
        """The WHERE condition; its values are appended to `params` (`$n` placeholders).
        The sources, when filtered, are always `$1` (maintained_total_sql relies on it)."""

        def bind(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        assert not params, "the filter binds first"
        clauses: list[str] = []
        if self.sources:
            clauses.append(f"source = ANY({bind(self.sources)}::text[])")
        if self.q:
            clauses.append(f"search @@ websearch_to_tsquery('english', {bind(self.q)})")
        if self.since:
            clauses.append(f"updated_at >= {bind(self.since)}")
        if self.until:
            clauses.append(f"updated_at < {bind(self.until)}")
        if after_id is not None:
            clauses.append(f"id > {bind(after_id)}")
        return " AND ".join(clauses) or "TRUE"


def maintained_total_sql(flt: RecordFilter) -> str:
    """The maintained count of the filter's sources ($1); only right when not flt.scans_records."""
    where = " WHERE source = ANY($1::text[])" if flt.sources else ""
    return f"SELECT coalesce(sum(records), 0)::bigint FROM source_stats{where}"


def bounded_count_sql(flt: RecordFilter, *, cap_param: int) -> str:
    """Matching records counted up to the cap (`$cap_param`), for filters that scan records;
    the filter's values bind as flt.where binds them."""
    return f"SELECT count(*) FROM (SELECT 1 FROM records WHERE {flt.where([])} LIMIT ${cap_param}) AS bounded"


async def count_records(db: AsyncConnection, *, flt: RecordFilter, counted: int | None = None) -> tuple[int, bool]:
    """Number of matching records and whether it is an estimate; `counted` is the bounded
    count when the page statement read it already."""
    if not flt.scans_records:
        rows = await fetch(db, maintained_total_sql(flt), *([flt.sources] if flt.sources else []))
        return int(rows[0][0]), False
    params: list[Any] = []
    where = flt.where(params)
    if counted is None:
        bounded = bounded_count_sql(flt, cap_param=len(params) + 1)
        counted = int((await fetch(db, bounded, *params, EXACT_TOTAL_CAP + 1))[0][0])
    if counted <= EXACT_TOTAL_CAP:
        return counted, False
    plan = (await fetch(db, f"EXPLAIN (FORMAT JSON) SELECT 1 FROM records WHERE {where}", *params))[0][0]
    if isinstance(plan, (str, bytes)):
        plan = orjson.loads(plan)
    return max(int(plan[0]["Plan"]["Plan Rows"]), counted), True


@functools.lru_cache(maxsize=256)
def _fingerprint(sources: tuple[str, ...], q: str | None, since: datetime | None, until: datetime | None) -> str:
    """filters_fingerprint, remembered for the filters clients repeat (most ask for none)."""
    return filters_fingerprint(sources=list(sources), q=q, since=since, until=until)


@dataclass(frozen=True)
class Page:
    """One page of records as PostgreSQL rendered them: a JSON array, ready to send."""

    items_json: bytes  # the API shape of every record, in id order
    more: bool  # a record follows the page
    last_id: int | None
    # Read by the page statement when the page is not empty: the maintained total (filters
    # that need no scan of records), else the count of matches up to EXACT_TOTAL_CAP + 1.
    total: int | None


async def fetch_page(
    db: AsyncConnection, *, flt: RecordFilter, after_id: int | None, offset: int, page_size: int
) -> Page:
    """Matching records in id order, each rendered as the API's JSON object by PostgreSQL
    (row_to_json of PAGE_COLUMNS, timestamps as the API always wrote them), whether another
    record follows, and the total (see Page.total) read by the same statement: one round
    trip and almost no Python work per record for the common request."""
    params: list[Any] = []
    where = flt.where(params, after_id=after_id)
    limit, offset_at, cap = len(params) + 1, len(params) + 2, len(params) + 3
    if flt.scans_records:
        total_sql, extra = bounded_count_sql(flt, cap_param=cap), [EXACT_TOTAL_CAP + 1]
    else:
        total_sql, extra = maintained_total_sql(flt), []
    sql = (
        f"SELECT r.id, convert_to(row_to_json(r)::text, 'UTF8') AS item, ({total_sql}) AS {_TOTAL} FROM ("
        f"SELECT {PAGE_COLUMNS} FROM records WHERE {where} ORDER BY id LIMIT ${limit} OFFSET ${offset_at}) AS r"
        " ORDER BY r.id"
    )
    rows = await fetch(db, sql, *params, page_size + 1, offset, *extra)
    shown = rows[:page_size]
    return Page(
        items_json=b"[" + b",".join([row[1] for row in shown]) + b"]",
        more=len(rows) > page_size,
        last_id=shown[-1][0] if shown else None,
        total=rows[0][2] if rows else None,
    )


async def get_record(db: AsyncConnection, *, record_id: int) -> dict[str, Any] | None:
    """One record by id, or None."""
    rows = await fetch(db, f"SELECT {RECORD_COLUMNS} FROM records WHERE id = $1", record_id)
    return dict(rows[0]) if rows else None


@router.get(
    "/data",
    response_model=DataPage,
    summary="List records",
    responses=error_responses(400, 422, *COMMON_ERRORS, 503),
)
async def list_data(
    request: Request,
    db: ReadConnectionDep,
    page: Annotated[int, Query(ge=1, le=10_000_000, description="Page number (offset paging).")] = 1,
    page_size: Annotated[int, Query(ge=1, le=500, description="Items per page.")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_CURSOR_LENGTH, description="`next_cursor` of the previous page; `page` is then ignored."),
    ] = None,
    source: Annotated[
        list[SourceFilter] | None, Query(max_length=100, description="Only these sources (repeat the parameter).")
    ] = None,
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=1000, pattern=NO_NUL, description="Full-text query, web-search syntax."),
    ] = None,
    since: Annotated[datetime | None, Query(description="updated_at >= since (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="updated_at < until (ISO 8601).")] = None,
) -> Response:
    """Records in id order, with exact (or flagged estimated) total and a keyset cursor."""
    flt = RecordFilter(sources=list(dict.fromkeys(source or [])), q=q, since=_utc(since), until=_utc(until))
    fingerprint = _fingerprint(tuple(flt.sources), flt.q, flt.since, flt.until)
    after_id: int | None = None
    if cursor is not None:
        try:
            after_id = decode_cursor(cursor, fingerprint=fingerprint)
        except InvalidCursor as exc:
            raise ApiError(400, f"query parameter 'cursor': {exc}", code="invalid_cursor") from None
    offset = 0 if cursor is not None else (page - 1) * page_size
    found = await fetch_page(db, flt=flt, after_id=after_id, offset=offset, page_size=page_size)
    if found.total is not None and (not flt.scans_records or found.total <= EXACT_TOTAL_CAP):
        total, estimated = found.total, False
    else:  # an empty page, or more matches than the cap: the estimate
        total, estimated = await count_records(db, flt=flt, counted=found.total)
    state = request.scope.get("state", {})  # set by RequestContextMiddleware
    started, request_id = state.get("started_at", time.perf_counter()), str(state.get("request_id", ""))
    rest = orjson.dumps(
        {
            "page": None if cursor is not None else page,
            "page_size": page_size,
            "total": total,
            "total_is_estimate": estimated,
            "next_cursor": encode_cursor(after_id=found.last_id, fingerprint=fingerprint)
            if found.more and found.last_id is not None
            else None,
            "meta": {"request_id": request_id, "latency_ms": round((time.perf_counter() - started) * 1000, 3)},
        }
    )
    # The items arrive as JSON from PostgreSQL; the rest of the page is spliced after them.
    # DataPage still documents the shape; the fuzz test checks it.
    return Response(b'{"items":' + found.items_json + b"," + rest[1:], media_type="application/json")


@router.get(
    "/data/{id}",
    response_model=Record,
    summary="One record",
    responses=error_responses(404, 422, *COMMON_ERRORS, 503),
)
async def read_record(
    db: ReadConnectionDep, id: Annotated[int, Path(ge=1, le=MAX_ID, description="Record id.")]
) -> dict[str, Any]:
    """A record by id; 404 when there is none."""
    record = await get_record(db, record_id=id)
    if record is None:
        raise ApiError(404, f"record {id} not found")
    return record
