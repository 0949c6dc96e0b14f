"""Garbage-collector settings for a serving API process.

Python's cyclic collector now and then walks every tracked object, and an API process
holds hundreds of thousands of long-lived ones (FastAPI, SQLAlchemy, pydantic, the pools).
Those full passes were the /data latency tail. Freezing what exists once start-up is done
moves it out of the collector's reach (gc.freeze), and a larger young-generation threshold
makes the per-request garbage collect in fewer, still cheap, passes (figures in
docs/benchmarks.md, "Performance knobs").

Only for the process uvicorn serves (app.main's module app): tests build many apps in one
process, and freezing there would only keep their garbage forever.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 100_000  # default 700
MIDDLE_THRESHOLD = 50  # default 10
OLD_THRESHOLD = 1_000  # default 10


def tune_after_startup() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
