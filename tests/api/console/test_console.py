"""The operator console at `/`: server-rendered (readable without JavaScript), and driven
in a real headless Chromium through Playwright against a real uvicorn, worker and DB."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest

from app.core.run_status import RunStatus
from tests.api.conftest import insert_run
from tests.support.pipeline import wait_for_run

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
AUTH = {"X-API-Key": "test-key"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def api_server(db: psycopg.Connection, worker) -> Iterator[str]:
    """A real `uvicorn app.main:app` on a free port, with the test environment."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "console-uvicorn.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env={**os.environ, "FLOWER_URL": "http://127.0.0.1:5555"}, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("uvicorn did not start; see test-artifacts/console-uvicorn.log")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def ingest_posts(base: str, db: psycopg.Connection) -> dict:
    response = httpx.post(f"{base}/runs", json={"sources": ["posts"]}, headers=AUTH, timeout=10)
    assert response.status_code == 202, response.text
    return wait_for_run(db, response.json()["runs"][0]["id"])


def test_page_is_server_rendered_and_readable_without_javascript(api_server: str, db: psycopg.Connection) -> None:
    run = ingest_posts(api_server, db)
    page = httpx.get(f"{api_server}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for name in ("posts", "passengers", "news", "orders"):
        assert f'data-source="{name}"' in html
    assert f"#{run['id']} succeeded" in html
    assert "<rect" in html  # the chart is drawn on the server
    assert 'href="/rejects"' in html and 'href="/drift"' in html and 'href="/docs"' in html
    assert "http://127.0.0.1:5555" in html
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert os.environ["TEST_SOURCE_TOKEN"] not in html


def test_console_in_headless_chromium_runs_a_source(api_server: str, db: psycopg.Connection) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), "Debian's chromium is required (.ci/run installs it)"
    ingest_posts(api_server, db)
    # A run half-way through its fetch (nothing enqueued it: the worker leaves it be).
    fetching = insert_run(db, "passengers", RunStatus.RUNNING, fetch_progress=orjson.dumps(
        {"segments": 1, "chunks": 2, "bytes_read": 500, "bytes_total": 1000}).decode())
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{api_server}/")
            posts_row = page.locator('tr.source[data-source="posts"]')
            assert RunStatus.SUCCEEDED in posts_row.locator("td.last-status").inner_text()
            assert posts_row.locator("svg.chart rect.bar").count() >= 1
            box = posts_row.locator("svg.chart rect.bar").first.bounding_box()
            assert box is not None and box["height"] > 0  # the chart is actually drawn

            active = page.locator(f'tr.active-run[data-run="{fetching}"]')
            assert "fetching: 50% of 1.0 kB" in active.locator("td.progress-text").inner_text()
            bar = active.locator("progress")
            assert bar.evaluate("el => el.position") == 0.5  # a determinate bar, half full
            bar_box = bar.bounding_box()
            assert bar_box is not None and bar_box["width"] > 0

            news_row = page.locator('tr.source[data-source="news"]')
            assert "never run" in news_row.inner_text()
            page.fill("#api-key", "test-key")
            news_row.locator("button.run-now").click()
            playwright_api.expect(page.locator("#run-result")).to_contain_text(RunStatus.QUEUED, timeout=10_000)
            run_id = int(page.locator("#run-result").inner_text().split()[1])
            wait_for_run(db, run_id)
            page.wait_for_load_state("load")
            page.reload()
            assert f"#{run_id}" in page.locator('tr.source[data-source="news"] td.last-status').inner_text()
            assert page.locator("#api-key").input_value() == ""  # the key was not kept
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "console.png").stat().st_size > 10_000


async def test_active_runs_show_their_progress(client, db: psycopg.Connection) -> None:
    """Served by the real app (ASGI) on the test database: no worker needed, the run rows
    carry the progress a fetch writes."""
    fetching = insert_run(db, "passengers", RunStatus.RUNNING, fetch_segments=2, fetch_progress=orjson.dumps(
        {"segments": 3, "chunks": 3, "bytes_read": 300_000_000, "bytes_total": 812_000_000}).decode())
    normalizing = insert_run(db, "news", RunStatus.RUNNING, chunks_total=4,
                             fetch_progress=orjson.dumps({"segments": 1, "chunks": 4, "pages": 1}).decode())
    db.execute("INSERT INTO chunk_ledger (run_id, chunk_no, fetched, inserted, updated, unchanged, rejected)"
               " VALUES (%s, 0, 10, 10, 0, 0, 0)", (normalizing,))
    queued = insert_run(db, "posts", RunStatus.QUEUED)
    done = insert_run(db, "posts", RunStatus.SUCCEEDED)

    page = await client.get("/")
    assert page.status_code == 200
    html = page.text
    assert f'data-run="{fetching}" data-stage="fetching"' in html
    assert 'value="0.3695"' in html and "fetching: 37% of 812 MB, 3 segments, 3 chunks stored, 0 committed" in html
    assert f'data-run="{normalizing}" data-stage="normalizing"' in html
    assert 'value="0.2500"' in html and "normalizing: 1 page, 1 segment, 1/4 chunks committed" in html
    assert f'data-run="{queued}" data-stage="queued"' in html and "queued: waiting for a worker" in html
    assert f'data-run="{done}"' not in html  # finished runs are not active
    # Everything the page loads comes from the API itself: nothing from a CDN.
    assert re.findall(r'<(?:script|link)[^>]*(?:src|href)="(?!/)', html) == []


async def test_no_active_runs_says_so(client, db: psycopg.Connection) -> None:
    insert_run(db, "posts", RunStatus.FAILED)
    assert "None: no run is queued or running." in (await client.get("/")).text
