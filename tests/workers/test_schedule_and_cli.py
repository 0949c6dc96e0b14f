"""Beat schedule from sources.toml, and the operator CLI against the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
from celery.schedules import crontab, schedule

from app.core.run_end import cancel_run
from app.core.run_status import RunStatus
from app.core.sources_config import load_sources
from app.settings import Settings
from tests.api.conftest import insert_run
from workers.schedule import build_beat_schedule

ROOT = Path(__file__).resolve().parents[2]


def test_beat_schedule_has_one_entry_per_enabled_pulled_source(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(
        '[sources.a]\nkind = "csv"\nurl = "a.csv"\nid_field = "id"\nschedule = "every 90s"\n'
        '[sources.b]\nkind = "rss"\nurl = "b.xml"\nschedule = "*/5 1 * * mon"\n'
        '[sources.c]\nkind = "rss"\nurl = "c.xml"\nenabled = false\n'
        '[sources.d]\nkind = "webhook"\nid_field = "id"\nsecret_env = "D_SECRET"\n'
    )
    entries = build_beat_schedule(load_sources(path), Settings(task_timeout_s=40))
    assert set(entries) == {"reconcile", "prune_raw_chunks", "source:a", "source:b"}
    a = entries["source:a"]
    assert a["task"] == "workers.tasks.start_scheduled_run" and a["args"] == ["a"]
    assert isinstance(a["schedule"], schedule) and a["schedule"].run_every == timedelta(seconds=90)
    assert isinstance(entries["source:b"]["schedule"], crontab)
    assert entries["source:b"]["schedule"].hour == {1}
    assert entries["reconcile"]["schedule"].run_every == timedelta(seconds=10)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.mark.usefixtures("worker")
def test_cli_run_wait_exits_0_on_success_and_1_on_failure(db: psycopg.Connection, tmp_path: Path) -> None:
    data = tmp_path / "people.csv"
    data.write_text("id,name\n1,Ann\n2,Bob\n")
    sources = tmp_path / "sources.toml"
    sources.write_text(
        f'[sources.people]\nkind = "csv"\nurl = "{data}"\nid_field = "id"\n'
        f'[sources.broken]\nkind = "csv"\nurl = "{tmp_path / "missing.csv"}"\nid_field = "id"\n'
    )
    env = {"SOURCES_FILE": str(sources)}
    ok = run_cli("run", "people", "--wait", "--timeout", "120", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert RunStatus.SUCCEEDED in ok.stdout
    assert db.execute("SELECT count(*) FROM records WHERE source = 'people'").fetchone()[0] == 2

    bad = run_cli("run", "--wait", "--timeout", "120", env=env)  # every enabled source
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert RunStatus.FAILED in bad.stdout

    listing = run_cli("runs", env=env)
    assert listing.returncode == 0 and "people" in listing.stdout and "broken" in listing.stdout
    stats = run_cli("stats", env=env)
    assert "people" in stats.stdout and "2" in stats.stdout
    assert run_cli("sources", env=env).returncode == 0


def test_cli_run_wait_shows_progress_and_says_a_run_was_cancelled(db: psycopg.Connection, tmp_path: Path) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text(f'[sources.people]\nkind = "csv"\nurl = "{tmp_path / "people.csv"}"\nid_field = "id"\n')
    # A run already fetching (no worker here moves it on): `run --wait` follows it.
    fetched_so_far = {"segments": 3, "chunks": 3, "bytes_read": 300_000_000, "bytes_total": 812_000_000}
    run_id = insert_run(db, "people", RunStatus.RUNNING, fetch_segments=2,
                        fetch_progress=orjson.dumps(fetched_so_far).decode())
    for chunk_no in range(2):
        db.execute("INSERT INTO chunk_ledger (run_id, chunk_no, fetched, inserted, updated, unchanged, rejected)"
                   " VALUES (%s, %s, 10, 10, 0, 0, 0)", (run_id, chunk_no))
    follow = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "people", "--wait", "--timeout", "120"], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", "SOURCES_FILE": str(sources)},
    )
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()  # printed as soon as the CLI has read the run
        expected = f"run {run_id} people: fetching: 37% of 812 MB, 3 segments, 3 chunks stored, 2 committed"
        assert first.strip() == expected
        cancel_run(db, run_id)
        out, errors = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 1, out + errors
    assert f"already has an active run {run_id}" in errors
    assert f"run {run_id} (people) was cancelled: 20 records committed before it stopped" in errors
    assert "cancelled on request" in out  # the result table's reason

    listing = run_cli("runs", env={"SOURCES_FILE": str(sources)})
    row = next(line for line in listing.stdout.splitlines() if f" {run_id} " in line)
    assert RunStatus.CANCELLED in row and "cancelled on request" in row


def test_cli_rejects_unknown_source_and_bad_config(tmp_path: Path, database: str) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text('[sources.x]\nkind = "ftp"\nurl = "x"\nid_field = "id"\n')
    result = run_cli("run", "x", env={"SOURCES_FILE": str(sources)})
    assert result.returncode == 2
    assert str(sources) in result.stderr and "source 'x'" in result.stderr and "kind" in result.stderr

    unknown = run_cli("run", "nope")
    assert unknown.returncode == 2 and "unknown source" in unknown.stderr


def test_cli_reset_requires_yes(database: str) -> None:
    assert run_cli("reset").returncode == 2
    assert run_cli("reset", "--yes").returncode == 0


def test_worker_refuses_to_start_with_a_bad_sources_file(tmp_path: Path) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text('[sources.x]\nkind = "csv"\nurl = "x.csv"\nid_field = "id"\nschedule = "sometimes"\n')
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "inspect", "ping"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={**os.environ, "SOURCES_FILE": str(sources)},
    )
    assert result.returncode != 0
    assert str(sources) in result.stderr and "key 'schedule'" in result.stderr
