"""The import layers (pyproject.toml [tool.importlinter], checked by `make lint`) hold, and
the check really fails when a forbidden import appears; the pure pipeline modules import
without the Celery app or a sources file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {c["source_modules"][0]: c["name"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())[
    "tool"]["importlinter"]["contracts"]}
WORKERS_CONTRACT, CORE_CONTRACT, APP_CONTRACT = CONTRACTS["workers"], CONTRACTS["app.core"], CONTRACTS["app"]


def _lint_imports() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert found, "lint-imports is not installed (requirements-dev.txt pins import-linter)"
    return found


def _tree(tmp_path: Path) -> Path:
    """A copy of the packages and the contracts, to break without touching the repository."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("app", "workers"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _run_lint(tree: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "1000", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run(
        [_lint_imports(), "--no-cache", "--no-logo"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )
    # rich may still wrap a long line: compare with whitespace folded.
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def _add_import(tree: Path, module: str, statement: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{statement}  # a forbidden import, added by the test\n")


def test_the_layers_hold_on_the_tree_as_it_is(tmp_path: Path) -> None:
    code, output = _run_lint(_tree(tmp_path))
    assert code == 0, output
    for name in CONTRACTS.values():
        assert f"{' '.join(name.split())} KEPT" in output, output


@pytest.mark.parametrize(
    ("module", "statement", "broken"),
    [
        ("workers/pipeline/normalize/coerce.py", "import app.api.errors", WORKERS_CONTRACT),
        ("workers/db.py", "from app.db.session import create_engine", WORKERS_CONTRACT),
        ("workers/tasks.py", "import app.observability.queue_depth", WORKERS_CONTRACT),
        ("app/core/raw_format.py", "import fastapi", CORE_CONTRACT),
        ("app/core/runs.py", "from sqlalchemy.ext.asyncio import AsyncSession", CORE_CONTRACT),
        ("app/core/enqueue.py", "import starlette.responses", CORE_CONTRACT),
        ("app/api/routes/runs.py", "from workers.sources.base import RawItem", APP_CONTRACT),
    ],
    ids=lambda value: value.split("/")[-1] if isinstance(value, str) and value.endswith(".py") else None,
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, statement: str, broken: str) -> None:
    tree = _tree(tmp_path)
    _add_import(tree, module, statement)
    code, output = _run_lint(tree)
    assert code != 0, output
    assert f"{' '.join(broken.split())} BROKEN" in output, output


def test_a_chain_through_an_allowed_module_is_caught(tmp_path: Path) -> None:
    """Indirect imports count: workers -> app.core -> app.api breaks the workers' contract too."""
    tree = _tree(tmp_path)
    _add_import(tree, "app/core/logs.py", "import app.api.errors")
    code, output = _run_lint(tree)
    assert code != 0, output
    assert f"{' '.join(WORKERS_CONTRACT.split())} BROKEN" in output, output
    assert f"{' '.join(CORE_CONTRACT.split())} BROKEN" in output, output


_IMPORT_ALONE = """
import sys

import app.core.sources_config as sources_config

def _no_sources(*args, **kwargs):
    raise SystemExit("load_sources was called")

sources_config.load_sources = _no_sources
import {module}

assert "workers.celery" not in sys.modules, "the Celery app (which loads the sources file) was imported"
"""


@pytest.mark.parametrize("module", ["workers.pipeline.normalize.normalizer", "workers.pipeline.fetch.raw_digest"])
def test_pure_pipeline_modules_import_without_the_celery_app_or_a_sources_file(module: str) -> None:
    env = {**os.environ, "SOURCES_FILE": "/nonexistent/sources.toml", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALONE.format(module=module)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
