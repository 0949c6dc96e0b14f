"""HTTP load: wrk when installed (`apt-get install -y wrk`), else an asyncio/httpx loop.

Both return the same LoadResult: requests/s, p50/p99 latency, and non-2xx count (a
load test that measured 429s or 500s measured nothing, so the caller checks it).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

import httpx

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str


def run(url: str, *, connections: int, duration_s: float, threads: int = 2) -> LoadResult:
    if shutil.which("wrk"):
        return _wrk(url, connections=connections, duration_s=duration_s, threads=threads)
    return asyncio.run(_httpx_load(url, connections=connections, duration_s=duration_s))


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert match, text
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _wrk(url: str, *, connections: int, duration_s: float, threads: int) -> LoadResult:
    cmd = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration_s:g}s", "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout  # noqa: S603
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    assert rps and "50" in percentiles and "99" in percentiles, out
    return LoadResult(float(rps.group(1)), _ms(percentiles["50"]), _ms(percentiles["99"]), errors, "wrk")


async def _httpx_load(url: str, *, connections: int, duration_s: float) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + duration_s

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.get(url)
                    if response.status_code >= 300:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] if latencies else 0.0

    return LoadResult(len(latencies) / elapsed, pct(0.50), pct(0.99), errors, "httpx")
