"""Benchmark inputs, all deterministic: the Titanic-format CSV, its 1%-changed twin, and
the same rows already normalised as a COPY file for the reference `\\copy`."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any, TextIO

import orjson
from generate_samples import TITANIC_COLUMNS, titanic_row  # scripts/ is on sys.path

from app.core.sources_config import SourceConfig

CHANGE_EVERY = 100  # every 100th row differs in the changed file: exactly 1 %
REFERENCE_COLUMNS = "source, external_id, title, content, author, url, published_at, data, content_hash, last_run_id"


def titanic_csv(directory: Path, rows: int) -> Path:
    """The Titanic-format CSV with `rows` rows (cached: the content depends on `rows` only).

    The same generator and seed as `generate_samples.py --titanic-rows N`, so a smaller file
    is the prefix of a bigger one.
    """
    path = directory / f"titanic-{rows}.csv"
    if not path.exists():
        rng = random.Random(2)
        partial = path.with_suffix(".partial")
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(TITANIC_COLUMNS)
            for passenger_id in range(1, rows + 1):
                writer.writerow(titanic_row(rng, passenger_id))
        partial.rename(path)
    return path


def changed_csv(base: Path) -> tuple[Path, int]:
    """A copy of `base` whose every CHANGE_EVERY-th row has a different Fare; (path, rows changed)."""
    path = base.with_name(base.stem + "-1pct.csv")
    if path.exists() and path.stat().st_mtime >= base.stat().st_mtime:
        with path.open("rb") as handle:
            lines = sum(1 for _ in handle) - 1
        return path, lines // CHANGE_EVERY
    changed = 0
    partial = path.with_suffix(".partial")
    with base.open(newline="", encoding="utf-8") as src, partial.open("w", newline="", encoding="utf-8") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        header = next(reader)
        writer.writerow(header)
        fare = header.index("Fare")
        for number, row in enumerate(reader, start=1):
            if number % CHANGE_EVERY == 0:
                row[fare] = f"{float(row[fare]) + 1:.4f}"
                changed += 1
            writer.writerow(row)
    partial.rename(path)
    return path, changed


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    return str(value).translate(_COPY_ESCAPES)


def reference_rows(csv_path: Path, out: Path, source: SourceConfig) -> int:
    """Normalise `csv_path` with the pipeline's own Normalizer into a text COPY file.

    The reference load then moves exactly the rows the pipeline writes, minus all of
    the pipeline's work: parsing, normalising, hashing, staging and the conflict check.
    """
    # Imported here: importing `workers` reads SOURCES_FILE, which bench.py writes first.
    from workers.pipeline.normalize.normalizer import Normalizer
    from workers.sources.csv_source import CsvRows

    normalizer = Normalizer(source)
    rows = CsvRows(csv_path, "utf-8-sig", source.delimiter, str(csv_path))
    written = 0
    with out.open("w", encoding="utf-8") as handle:
        batch = []
        for item in rows.items():
            batch.append(item)
            if len(batch) == 10_000:
                written += _write_batch(handle, normalizer, batch, source.name)
                batch = []
        if batch:
            written += _write_batch(handle, normalizer, batch, source.name)
    return written


def _write_batch(handle: TextIO, normalizer: Any, batch: list[Any], source_name: str) -> int:
    chunk = normalizer.normalize_chunk(batch)
    lines = []
    for rec in chunk.records:
        fields = (source_name, rec.external_id, rec.title, rec.content, rec.author, rec.url, rec.published_at,
                  orjson.dumps(rec.data).decode(), rec.content_hash, 0)
        lines.append("\t".join(_copy_field(value) for value in fields))
    handle.write("\n".join(lines) + "\n")
    return len(chunk.records)
