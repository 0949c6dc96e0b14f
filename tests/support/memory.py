"""Peak resident memory of a process tree, from the kernel's own high-water mark (VmHWM).

Sampled from a thread, so that a pool child recycled mid-run (worker_max_memory_per_child)
still counts with the peak it reached.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def peak_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class PeakMemory:
    """`with PeakMemory(root_pid) as peaks:` then `peaks.largest_mib`: the largest single process."""

    root_pid: int
    interval_s: float = 0.1
    peaks_kib: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        for pid in descendants(self.root_pid):
            peak = peak_rss_kib(pid)
            if peak is not None:
                self.peaks_kib[pid] = max(peak, self.peaks_kib.get(pid, 0))

    @property
    def largest_mib(self) -> float:
        return max(self.peaks_kib.values(), default=0) / 1024
