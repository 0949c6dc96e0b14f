"""A paginated API that takes three task time limits to read is fetched as a chain of short
segments (workers/pipeline/fetch/segment.py), and a worker killed mid-way costs one segment.

Scaled down: TASK_TIMEOUT_S=20, so a segment reads for at most 5 s (a quarter of it), and
the upstream answers one page a second for 60 pages. As one task, the fetch would be
killed by the time limit at 20 s and start again from page 1 on every attempt.
"""

from __future__ import annotations

import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.support.faults import ProcessSet, SlowPages, assert_counts, assert_exact_records, post, scalar, wait_until
from tests.support.http_server import LocalHTTPServer
from tests.support.pipeline import get_run, source, start_run, wait_for_run

LONG = {"TASK_TIMEOUT_S": "20"}
PAGES, PAGE_SIZE = 60, 50
UPSTREAM = [post(i) for i in range(1, PAGES * PAGE_SIZE - PAGE_SIZE // 2 + 1)]  # the last page is short
IDS = {str(record["id"]) for record in UPSTREAM}
# Fetching takes about 60 s; a stalled lease is taken back after TASK_TIMEOUT_S, and beat's
# reconciler looks every 5 s. This is only how long the test waits before it fails.
FINISH_WITHIN_S = 200


def paged_source(http: LocalHTTPServer) -> tuple[SlowPages, object]:
    pages = SlowPages(UPSTREAM, delay_s=1.0)
    http.route("/slow", pages)
    config = source("long", "http_json", f"{http.url}/slow", records_path="data", pagination="page",
                    page_size=PAGE_SIZE, chunk_size=100, fields={"title": "title", "content": "body"})
    return pages, config


@pytest.mark.scenario
@pytest.mark.timeout(300)
def test_a_fetch_three_time_limits_long_completes_reading_each_page_about_once(
    db: psycopg.Connection, procs: ProcessSet, http: LocalHTTPServer
) -> None:
    pages, config = paged_source(http)
    procs.worker("w", concurrency=2, **LONG)
    procs.beat(**LONG)

    run = wait_for_run(db, start_run(db, config), timeout_s=FINISH_WITHIN_S)  # type: ignore[arg-type]

    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert_counts(run, len(UPSTREAM), inserted=len(UPSTREAM))
    assert_exact_records(db, "long", IDS)
    assert set(pages.requested) == set(range(1, PAGES + 1))
    assert sum(pages.requested.values()) <= 1.2 * PAGES, pages.requested
    assert run["fetch_segments"] > 1  # no task read for three time limits
    assert run["fetch_progress"]["done"] is True and run["fetch_progress"]["segments"] == run["fetch_segments"]
    print(f"{run['fetch_segments']} segments, {sum(pages.requested.values())} page requests for {PAGES} pages")


@pytest.mark.scenario
@pytest.mark.timeout(300)
def test_the_whole_worker_killed_halfway_re_reads_at_most_the_segment_under_way(
    db: psycopg.Connection, procs: ProcessSet, http: LocalHTTPServer
) -> None:
    pages, config = paged_source(http)
    first = procs.worker("first", concurrency=2, **LONG)
    procs.beat(**LONG)

    run_id = start_run(db, config)  # type: ignore[arg-type]
    def deep_in_a_segment() -> bool:
        """Half the pages asked for, the last of them the third or later since the last committed position."""
        position = get_run(db, run_id)["fetch_position"]
        committed = 0 if position is None else position["source"]["pages"]
        return sum(pages.requested.values()) > PAGES // 2 and max(pages.requested) - committed >= 3

    # Kill while a page request is pending (the upstream takes a second to answer, this polls
    # every 0.1 s), so that a segment is surely under way: it claimed the lease, read pages,
    # and committed nothing yet.
    wait_until(deep_in_a_segment, 90, "the fetch to read half the pages, mid-segment")
    first.kill()  # SIGKILL to the process group: main process and every pool child, no ack, no cleanup
    at_kill = get_run(db, run_id)
    requested_before = dict(pages.requested)
    assert at_kill["chunks_total"] is None and at_kill["fetch_position"] is not None, at_kill
    # Pages the killed worker asked for after the last position it committed: the segment under way.
    under_way = {page for page in requested_before if page > at_kill["fetch_position"]["source"]["pages"]}
    assert under_way, (at_kill["fetch_position"], requested_before)

    procs.worker("second", concurrency=2, **LONG)
    run = wait_for_run(db, run_id, timeout_s=FINISH_WITHIN_S)

    assert run["status"] == RunStatus.SUCCEEDED, run["error"]
    assert_counts(run, len(UPSTREAM), inserted=len(UPSTREAM))
    assert_exact_records(db, "long", IDS)
    assert scalar(db, "SELECT records FROM source_stats WHERE source = 'long'") == len(UPSTREAM)
    assert set(pages.requested) == set(range(1, PAGES + 1))
    twice = {page for page, count in pages.requested.items() if count > 1}
    # The next segment starts at the committed position: it reads again the pages under way, and nothing else.
    assert max(pages.requested.values()) <= 2 and twice == under_way, (twice, under_way, pages.requested)
    assert run["fetch_segments"] > 2 and run["fetch_attempts"] > run["fetch_segments"]  # one segment was lost
    print(f"killed with {len(under_way)} pages read past the committed position; {len(twice)} read again")
