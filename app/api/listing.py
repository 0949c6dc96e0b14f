"""The one query shape the list endpoints share: newest first, optional equality filters."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.db.session import Queryable


async def newest_rows(
    db: Queryable, *, table: str, columns: str, filters: dict[str, Any], limit: int
) -> list[dict[str, Any]]:
    """Rows of `table` matching every non-None filter (column = value), newest id first.

    `table`, `columns` and the filter names come from code, never from a request; the
    values are bound parameters.
    """
    given = {column: value for column, value in filters.items() if value is not None}
    where = " AND ".join(f"{column} = :{column}" for column in given) or "TRUE"
    sql = f"SELECT {columns} FROM {table} WHERE {where} ORDER BY id DESC LIMIT :limit"
    return [dict(row) for row in (await db.execute(text(sql), {**given, "limit": limit})).mappings()]
