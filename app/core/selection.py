"""Which sources a run request means: one rule for POST /runs, the CLI and beat."""

from __future__ import annotations

from app.core.sources_config import SourceConfig


class SourceSelectionError(Exception):
    """A run request names sources that cannot run."""


class UnknownSources(SourceSelectionError):
    def __init__(self, names: list[str]):
        shown = ", ".join(repr(name[:100]) for name in names[:10])
        super().__init__(f"unknown source(s): {shown}")
        self.names = names


class NotRunnable(SourceSelectionError):
    """A push source: webhooks feed it, nothing fetches it."""

    def __init__(self, name: str):
        super().__init__(
            f"source '{name}' is a webhook source: it is fed by POST /webhooks/{name} and cannot be run"
        )
        self.name = name


def runnable(configured: dict[str, SourceConfig]) -> list[SourceConfig]:
    """Every enabled pulled source: what a request naming no source runs, and what beat schedules."""
    return [source for source in configured.values() if source.enabled and source.is_pulled]


def select_sources(configured: dict[str, SourceConfig], requested: list[str] | None) -> list[SourceConfig]:
    """The sources a run request names, in order and once each (every runnable one when None)."""
    if requested is None:
        return runnable(configured)
    names = list(dict.fromkeys(requested))
    unknown = [name for name in names if name not in configured]
    if unknown:
        raise UnknownSources(unknown)
    pushed = [name for name in names if not configured[name].is_pulled]
    if pushed:
        raise NotRunnable(pushed[0])
    return [configured[name] for name in names]
