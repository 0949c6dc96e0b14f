"""SQL written once for both drivers: workers and the CLI run psycopg, the API SQLAlchemy on asyncpg."""

from __future__ import annotations

import re


def named_params(sql: str) -> str:
    """psycopg's `%(name)s` style in SQLAlchemy's `:name` style (CAST, since `:x::jsonb` misparses)."""
    sql = re.sub(r"%\((\w+)\)s::(\w+)", r"CAST(:\1 AS \2)", sql)
    return re.sub(r"%\((\w+)\)s", r":\1", sql)
