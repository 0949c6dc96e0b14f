"""The API's start commands as each documented place writes them: the Dockerfile's CMD,
docker-compose.yml's api service, `make run` (scripts/run_local.py) and README.md.

Tests start them as written (only the Python, host and port adapted to the test machine),
so a flag that one of them forgets is caught.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _dockerfile() -> list[str]:
    [cmd] = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    return list(json.loads(cmd.removeprefix("CMD ")))


def _compose() -> list[str]:
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["command"]
    return list(command) if isinstance(command, list) else shlex.split(command)


def _make_run() -> list[str]:
    spec = importlib.util.spec_from_file_location("run_local", ROOT / "scripts" / "run_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.api_command("python", 8000))


def _readme() -> list[str]:
    match = re.search(r"^\| API \| `([^`]+)`", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert match, "README.md's command table has no API row"
    return shlex.split(match.group(1))


DOCUMENTED = {"Dockerfile": _dockerfile, "docker-compose.yml": _compose, "make run": _make_run, "README.md": _readme}


def documented_api_command(where: str) -> list[str]:
    return DOCUMENTED[where]()


def runnable(command: list[str], *, port: int) -> list[str]:
    """The command with this interpreter's uvicorn, on 127.0.0.1:port; every other argument as written."""
    args = command[command.index("uvicorn") + 1:]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return [sys.executable, "-m", "uvicorn", *args]
