"""Response and request models: they drive validation of what we return and the OpenAPI
document client generators read."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.core.progress import Stage
from app.core.run_status import RunStatus

DriftKind = Literal["added", "removed", "type_changed"]

_TS = "2026-11-26T10:15:00Z"

# PostgreSQL text cannot hold NUL: say so in the schema instead of failing in the database.
NO_NUL = r"^[^\x00]*$"
SourceFilter = Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["record 42 not found"])
    request_id: str = Field(examples=["3f2b9c1e0a7d4e8f9b6a5c4d3e2f1a0b"])


class ErrorResponse(BaseModel):
    """Every error has this shape, whatever the status."""

    error: ErrorDetail


class Record(BaseModel):
    id: int
    source: str
    external_id: str
    title: str | None
    content: str | None
    author: str | None
    url: str | None
    published_at: datetime | None
    data: dict[str, Any] = Field(description="Every source field after coercion.")
    content_hash: str = Field(description="Hex digest of the normalised record.")
    first_seen_at: datetime
    updated_at: datetime

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "source": "posts",
                    "external_id": "1",
                    "title": "sunt aut facere",
                    "content": "quia et suscipit",
                    "author": "1",
                    "url": None,
                    "published_at": None,
                    "data": {"id": 1, "userId": 1, "title": "sunt aut facere", "body": "quia et suscipit"},
                    "content_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "first_seen_at": _TS,
                    "updated_at": _TS,
                }
            ]
        }
    )


class Meta(BaseModel):
    request_id: str
    latency_ms: float


class DataPage(BaseModel):
    items: list[Record]
    page: int | None = Field(description="The page number in page mode; null in cursor mode.")
    page_size: int
    total: int = Field(description="Matching records; exact below 100,000, else possibly an estimate.")
    total_is_estimate: bool
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")
    meta: Meta


class RunCounts(BaseModel):
    fetched: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int


class Run(BaseModel):
    id: int
    source: str
    trigger: str = Field(examples=["api"], description="schedule | api | cli | webhook")
    status: RunStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: RunCounts
    error: str | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "source": "posts",
                    "trigger": "api",
                    "status": RunStatus.QUEUED.value,
                    "created_at": _TS,
                    "started_at": None,
                    "finished_at": None,
                    "counts": {"fetched": 0, "inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0},
                    "error": None,
                }
            ]
        }
    )


class RunProgress(BaseModel):
    """Where a run's fetch is (app/core/progress.py). Fields a source cannot tell (a JSON
    API has no byte size; a CSV file has no pages) are null."""

    stage: Stage = Field(
        description="queued: waiting for a worker; fetching: reading the source; normalizing: the source is "
        "read and its chunks are being committed; finished: the run ended (see `status`)."
    )
    segments: int = Field(description="Fetch segments started (each a bounded task; the fetch resumes between them).")
    pages: int | None = Field(description="Pages (or documents) read, for paginated sources.")
    items_read: int | None = Field(description="Records read from the source so far.")
    bytes_read: int | None = Field(description="Bytes of the file read so far.")
    bytes_total: int | None = Field(description="The file's size, when the source says it.")
    fraction_read: float | None = Field(
        ge=0, le=1, description="bytes_read / bytes_total (0..1), when both are known."
    )
    chunks_stored: int = Field(description="Raw chunks the fetch stored so far.")
    chunks_committed: int = Field(description="Chunks normalised and committed.")
    chunks_total: int | None = Field(description="Every chunk of the run; null until the whole source is read.")
    restarts: int = Field(description="Times the fetch started again from the top because the source changed.")


class RunDetail(Run):
    """One run (GET /runs/{id}): the run and where its fetch is."""

    progress: RunProgress

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "source": "posts",
                    "trigger": "api",
                    "status": RunStatus.RUNNING.value,
                    "created_at": _TS,
                    "started_at": _TS,
                    "finished_at": None,
                    "counts": {"fetched": 0, "inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0},
                    "error": None,
                    "progress": {
                        "stage": Stage.FETCHING.value,
                        "segments": 3,
                        "pages": None,
                        "items_read": 2_400_000,
                        "bytes_read": 300_000_000,
                        "bytes_total": 812_000_000,
                        "fraction_read": 0.3695,
                        "chunks_stored": 2400,
                        "chunks_committed": 2380,
                        "chunks_total": None,
                        "restarts": 0,
                    },
                }
            ]
        }
    )


class RunList(BaseModel):
    runs: list[Run]


class RunsRequest(BaseModel):
    """`{}` (or no body) runs every enabled pulled source."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"sources": ["posts"]}, {}]})

    sources: list[str] | None = Field(
        None, min_length=1, max_length=100, description="Source names; omit for every enabled source."
    )


class SourceInfo(BaseModel):
    name: str
    kind: Literal["http_json", "csv", "rss", "webhook"]
    schedule: str
    enabled: bool
    paused_reason: str | None = Field(None, description="Set when schema drift paused the source.")
    checkpoint: Any = Field(None, description="The incremental checkpoint (JSON), null if none.")
    last_run: Run | None


class SourceList(BaseModel):
    sources: list[SourceInfo]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, str] = Field(examples=[{"database": "ok", "redis": "ok"}])


class RecordStats(BaseModel):
    total: int
    by_source: dict[str, int]


class RunStats(BaseModel):
    total: int
    by_status: dict[str, int]
    last_by_source: dict[str, Run]


class Stats(BaseModel):
    records: RecordStats
    runs: RunStats
    queues: dict[str, int | None] = Field(
        description="Messages waiting per Celery queue; null when the broker cannot say.",
        examples=[{"fetch": 0, "normalize": 3, "maintenance": 0}],
    )
    rejected: int
    drift_events: int


class Reject(BaseModel):
    id: int
    run_id: int
    source: str
    chunk_no: int
    line_no: int | None
    external_id: str | None
    reason: str = Field(examples=["coercion_failed"])
    field: str | None = Field(examples=["Age"])
    message: str
    raw: Any = Field(description="The raw payload as received.")
    created_at: datetime


class RejectList(BaseModel):
    items: list[Reject]


class DriftEvent(BaseModel):
    id: int
    source: str
    run_id: int | None
    kind: DriftKind
    field: str
    old_type: str | None
    new_type: str | None
    created_at: datetime


class DriftList(BaseModel):
    items: list[DriftEvent]
