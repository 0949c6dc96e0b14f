"""`make run`: the whole stack locally without Docker, stopped cleanly by Ctrl-C.

Checks PostgreSQL and Redis (starting them with `docker compose up -d db redis` when a
Docker engine answers, otherwise saying exactly how to start them), applies migrations,
starts API, worker, beat and Flower, ingests the default sources once, then waits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.settings import get_settings  # noqa: E402

API_PORT = int(os.environ.get("API_PORT", "8000"))
FLOWER_PORT = int(os.environ.get("FLOWER_PORT", "5555"))


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0  # noqa: S603,S607


def ensure_services() -> None:
    settings = get_settings()
    missing = [
        name for name, url, port in (("db", settings.database_url, 5432), ("redis", settings.redis_url, 6379))
        if not reachable(url, port)
    ]
    if not missing:
        return
    if docker_engine_answers():
        print(f"starting {', '.join(missing)} with docker compose")
        if "db" in missing and "DATABASE_URL" not in os.environ:
            # The compose database requires a password (POSTGRES_PASSWORD, default "postgres").
            password = os.environ.get("POSTGRES_PASSWORD", "postgres")
            os.environ["DATABASE_URL"] = f"postgresql://postgres:{password}@127.0.0.1:5432/ingest"
            get_settings.cache_clear()
            settings = get_settings()
        subprocess.run(["docker", "compose", "up", "-d", *missing], cwd=ROOT, check=True)  # noqa: S603,S607
        for _ in range(60):
            if all(reachable(u, p) for u, p in ((settings.database_url, 5432), (settings.redis_url, 6379))):
                return
            time.sleep(1)
    hints = {
        "db": f"PostgreSQL is not answering at {urlsplit(settings.database_url).netloc.split('@')[-1]} "
              "(DATABASE_URL). Start it: `docker compose up -d db`, or "
              "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`.",
        "redis": f"Redis is not answering at {urlsplit(settings.redis_url).netloc} (REDIS_URL). Start it: "
                 "`docker compose up -d redis`, or `redis-server --daemonize yes --port 6379`.",
    }
    for name in missing:
        print(hints[name], file=sys.stderr)
    raise SystemExit(2)


def flower_env() -> dict[str, str]:
    """Flower reads FLOWER_BASIC_AUTH from its environment only: pass on the one in `.env`."""
    env = dict(os.environ)
    if not env.get("FLOWER_BASIC_AUTH"):
        from dotenv import dotenv_values

        env["FLOWER_BASIC_AUTH"] = dotenv_values(ROOT / ".env").get("FLOWER_BASIC_AUTH") or ""
    if not env["FLOWER_BASIC_AUTH"]:
        del env["FLOWER_BASIC_AUTH"]
        print("Flower runs WITHOUT authentication: set FLOWER_BASIC_AUTH=user:password (e.g. in .env)",
              file=sys.stderr)
    return env


def api_command(python: str, port: int) -> list[str]:
    """The API as `make run` starts it. --no-proxy-headers: X-Forwarded-For is trusted only
    from FORWARDED_ALLOW_IPS, by the app; uvicorn's own handling trusts any loopback client."""
    return [python, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers"]


def main() -> None:
    ensure_services()
    python = sys.executable
    subprocess.run([python, "-m", "app.cli", "migrate"], cwd=ROOT, check=True)  # noqa: S603
    commands = {
        "api": api_command(python, API_PORT),
        "worker": [python, "-m", "celery", "-A", "workers", "worker", "-l", "INFO", "-n", "local@%h"],
        "beat": [python, "-m", "celery", "-A", "workers", "beat", "-l", "INFO",
                 "-s", str(ROOT / ".venv" / "celerybeat-schedule")],
        "flower": [python, "-m", "celery", "-A", "workers", "flower", f"--port={FLOWER_PORT}", "--address=127.0.0.1"],
    }
    envs = {"flower": flower_env()}

    def start(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(commands[name], cwd=ROOT, env=envs.get(name))  # noqa: S603

    processes = {name: start(name) for name in commands}
    print(f"\nAPI http://127.0.0.1:{API_PORT}/docs  console http://127.0.0.1:{API_PORT}/  "
          f"Flower http://127.0.0.1:{FLOWER_PORT}/   Ctrl-C stops everything\n")
    stopping = False

    def stop(*_: object, interrupted: bool = False) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        print("\nstopping...")
        if interrupted:  # Ctrl-C already reached every process of the terminal's group
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(p.poll() is None for p in processes.values()):
                time.sleep(0.2)
        for proc in processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    signal.signal(signal.SIGTERM, stop)
    try:
        time.sleep(3)
        subprocess.run([python, "-m", "app.cli", "run", "--wait", "--timeout", "600"], cwd=ROOT)  # noqa: S603
        while True:
            # A supervisor's job: Celery 5.7's worker exits when Redis restarts under it
            # (docs/operations.md); bring any process that died back, as compose does.
            for name, proc in processes.items():
                if proc.poll() is not None and not stopping:
                    print(f"{name} exited with {proc.returncode}; restarting it", file=sys.stderr)
                    time.sleep(2)
                    processes[name] = start(name)
            time.sleep(1)
    except KeyboardInterrupt:
        stop(interrupted=True)
    finally:
        stop()


if __name__ == "__main__":
    main()
