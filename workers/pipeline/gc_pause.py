"""Pausing Python's cyclic garbage collector around the per-record loops.

A chunk is thousands of short-lived dicts and lists (decoded, normalised, staged) that
hold no reference cycles: reference counting frees them the moment the chunk is done.
The cyclic collector cannot know that; with thousands of container objects alive it
runs every 700 allocations and walks them all again, a large share of the cost of
decoding a chunk (docs/benchmarks.md, "Performance knobs"). Paused, it costs nothing; anything cyclic made meanwhile
is collected once the pause ends (or by an explicit young-generation pass, see fetch).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector for the block (re-entrant: an inner pause is a no-op)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
