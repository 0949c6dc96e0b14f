"""`python -m app.cli migrate`: create the database if it is missing, then upgrade to head."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql

from app.settings import Settings

_ROOT = Path(__file__).resolve().parents[2]


def create_database_if_missing(settings: Settings) -> bool:
    """Return True when the database had to be created."""
    name = settings.database_name
    with psycopg.connect(settings.maintenance_url(), autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def alembic_config(settings: Settings) -> Config:
    config = Config(str(_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(_ROOT / "app" / "db" / "migrations"))
    config.attributes["database_url"] = settings.sqlalchemy_sync_url
    return config


def migrate(settings: Settings) -> None:
    """Create the database when missing and apply every migration."""
    create_database_if_missing(settings)
    command.upgrade(alembic_config(settings), "head")
