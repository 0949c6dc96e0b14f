"""Forwarded client addresses: X-Forwarded-For is trusted only from FORWARDED_ALLOW_IPS.

A real uvicorn is started with each documented command (tests/support/api_commands.py)
and sent forged headers from 127.0.0.1. The rate limiter keys anonymous clients by IP, so
it shows which address the API believed: forged headers must not buy fresh buckets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg
import pytest
from pydantic import ValidationError

from app.settings import Settings
from tests.api.conftest import ClientFactory
from tests.support.api_commands import DOCUMENTED, ROOT, documented_api_command, runnable

ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def apis(where: str, *environments: dict[str, str]) -> Iterator[list[str]]:
    """One API per environment, each started by the command documented in `where` with
    RATE_LIMIT=3/minute, side by side (each takes seconds to import); their base URLs."""
    ARTIFACTS.mkdir(exist_ok=True)
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        with open(ARTIFACTS / "proxy-headers-uvicorn.log", "ab") as log:
            for environment in environments:
                env = {key: value for key, value in os.environ.items() if key != "FORWARDED_ALLOW_IPS"}
                env.update(RATE_LIMIT="3/minute", **environment)
                port = free_port()
                command = runnable(documented_api_command(where), port=port)
                proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
                started.append((proc, f"http://127.0.0.1:{port}"))
        for proc, base in started:
            _wait_until_healthy(proc, base, where)
        yield [base for _, base in started]
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            proc.wait(timeout=20)


def _wait_until_healthy(proc: subprocess.Popen[bytes], base: str, where: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{where}: uvicorn did not start; see test-artifacts/proxy-headers-uvicorn.log")
        time.sleep(0.1)


def statuses(base: str, forwarded_for: list[str]) -> list[int]:
    return [
        httpx.get(f"{base}/data", params={"page_size": 1}, headers={"X-Forwarded-For": ip}, timeout=10).status_code
        for ip in forwarded_for
    ]


@pytest.mark.parametrize("where", sorted(DOCUMENTED))
def test_each_documented_command_trusts_forwarded_for_only_from_forwarded_allow_ips(
    db: psycopg.Connection, where: str
) -> None:
    with apis(where, {}, {"FORWARDED_ALLOW_IPS": "127.0.0.1"}) as (default, behind_proxy):
        # The default: no proxy is trusted, the client is the peer whatever the header says.
        assert statuses(default, [f"203.0.113.{i}" for i in range(1, 5)]) == [200, 200, 200, 429]
        # The peer is the trusted proxy: the header names the client.
        assert statuses(behind_proxy, [f"198.51.100.{i}" for i in range(1, 5)]) == [200] * 4
        assert statuses(behind_proxy, ["198.51.100.9"] * 4) == [200, 200, 200, 429]


async def test_forwarded_for_names_the_nearest_address_that_is_not_a_trusted_proxy(
    make_client: ClientFactory,
) -> None:
    # The test client connects from 127.0.0.1 (tests/api/conftest.py).
    elsewhere = await make_client(rate_limit="2/minute", forwarded_allow_ips="10.0.0.0/8, ::1")
    forged = [f"203.0.113.{i}" for i in range(3)]
    assert [(await elsewhere.get("/data", headers={"X-Forwarded-For": f})).status_code for f in forged] == [
        200, 200, 429,  # the peer is no trusted proxy: one bucket, 127.0.0.1's
    ]
    proxied = await make_client(rate_limit="2/minute", forwarded_allow_ips="127.0.0.1, 10.0.0.0/8")
    # Each proxy appends the address it saw: a client forging the first entry does not choose its bucket.
    chains = [f"{forged}, 198.51.100.7, 10.1.2.3" for forged in ("1.1.1.1", "2.2.2.2", "3.3.3.3")]
    assert [(await proxied.get("/data", headers={"X-Forwarded-For": c})).status_code for c in chains] == [200, 200, 429]
    other = await proxied.get("/data", headers={"X-Forwarded-For": "198.51.100.8, 10.1.2.3"})
    assert other.status_code == 200


@pytest.mark.parametrize("value", ["10.0.0.l", "10.0.0.5/8", "proxy.internal", "*, 10.0.0.1"])
def test_a_forwarded_allow_ips_entry_that_is_no_address_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="forwarded_allow_ips"):
        Settings(forwarded_allow_ips=value)
    valid = Settings(forwarded_allow_ips="10.0.0.5, 10.0.0.0/8, ::1")
    assert valid.trusted_proxies == ["10.0.0.5", "10.0.0.0/8", "::1"]
    assert Settings(forwarded_allow_ips="").trusted_proxies == []
