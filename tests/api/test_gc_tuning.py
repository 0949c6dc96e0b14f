"""The served API process freezes its start-up objects and raises the young-generation
threshold (app/api/gc_tuning.py); apps built by create_app() (tests, embedding) do not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import asyncio, gc
import app.main
from app.api.gc_tuning import YOUNG_THRESHOLD

async def main():
    before = (gc.get_freeze_count(), gc.get_threshold()[0])
    async with app.main.app.router.lifespan_context(app.main.app):
        served = (gc.get_freeze_count(), gc.get_threshold()[0])
    plain = app.main.create_app(app.main.get_settings())
    print(before[0], before[1], served[0], served[1] == YOUNG_THRESHOLD, getattr(plain.state, "tune_gc", False))

asyncio.run(main())
"""


def test_the_served_app_tunes_the_collector_and_create_app_does_not() -> None:
    out = subprocess.run(  # noqa: S603
        [sys.executable, "-c", PROBE], cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    frozen_before, threshold_before, frozen_served, tuned, plain_tunes = out.stdout.split()
    assert (frozen_before, threshold_before) == ("0", "700")
    assert int(frozen_served) > 10_000  # FastAPI, SQLAlchemy, pydantic... out of the collector's reach
    assert (tuned, plain_tunes) == ("True", "False")
