"""Alembic environment: the URL comes from Settings, so one DATABASE_URL drives everything."""

from alembic import context
from sqlalchemy import create_engine

from app.db.tables import metadata
from app.settings import get_settings

url = context.config.attributes.get("database_url") or get_settings().sqlalchemy_sync_url


def run_migrations() -> None:
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations()
