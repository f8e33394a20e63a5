"""Apply pending Alembic migrations once, under a lock, before any worker starts (DESIGN.md §6)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from .database import make_migration_engine

_ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
_PG_LOCK_ID = 0x7477_6F66  # "twof": one advisory lock shared by every Twofold process


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config(str(_ALEMBIC_INI))
    config.set_main_option("script_location", str(_ALEMBIC_INI.with_name("migrations")))
    config.attributes["connection"] = connection
    return config


@contextlib.contextmanager
def _sqlite_file_lock(database: str | None) -> Iterator[None]:
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_suffix(".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(database_url: str) -> None:
    url = make_url(database_url)
    engine = make_migration_engine(database_url)
    try:
        if url.get_backend_name() == "sqlite":
            with _sqlite_file_lock(url.database), engine.connect() as connection:
                command.upgrade(alembic_config(connection), "head")
                connection.commit()
        else:
            with engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _PG_LOCK_ID})
                connection.commit()
                try:
                    command.upgrade(alembic_config(connection), "head")
                    connection.commit()
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _PG_LOCK_ID})
                    connection.commit()
    finally:
        engine.dispose()
