"""Engine set-up and schema migrations (Alembic scripts in ``migrations/``, shipped in the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import event, false, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from orchestrator.db.sqlite_inline import connector

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` / ``sqlite:///`` URLs and pick the async drivers."""
    for plain, driver in (("postgresql://", "postgresql+asyncpg://"), ("postgres://", "postgresql+asyncpg://"),
                          ("sqlite://", "sqlite+aiosqlite://")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url


def make_engine(url: str) -> AsyncEngine:
    url = normalise_url(url)
    # JSON columns are read on every listing: msgspec decodes them several times faster than json.loads.
    if url.startswith("sqlite"):
        # The aiosqlite dialect over an inline connection (sqlite_inline: no thread hop per call).
        parsed = make_url(url)
        uri = parsed.query.get("uri") in ("true", "1")
        # A roomy pool: a writer waiting for the lock holds its connection meanwhile, and readers must
        # not queue behind the writers for one (an SQLite connection is three file handles).
        pool = {} if (parsed.database or ":memory:") == ":memory:" else {"pool_size": 20, "max_overflow": 60}
        engine = create_async_engine(url, json_deserializer=msgspec.json.decode,
                                     async_creator=connector(parsed.database or ":memory:", uri), **pool)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the one writer; foreign keys are off by default.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, json_deserializer=msgspec.json.decode)


def _upgrade(connection: Connection) -> None:
    # Imported here: Alembic (and the Mako templates it loads) is a fifth of a command's start-up,
    # and the commands that leave the schema to the running API node never migrate.
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "heads")  # every branch: features may add migrations side by side


async def migrate(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations rebuild SQLite tables; with foreign keys enforced, dropping a
            # referenced table fails.  The pragma only takes effect outside a transaction.
            await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        await conn.run_sync(_upgrade)
        await conn.commit()
        if sqlite:
            await conn.exec_driver_sql("PRAGMA foreign_keys=ON")


def make_sessionmaker(engine: AsyncEngine, session_class: type[Session] = Session) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=session_class)


async def lock_rows(session: AsyncSession, model: Any, uuids: list[str]) -> None:
    """Serialise this transaction with others writing these rows, before it reads them: of two
    concurrent DELETEs of one row, the second then finds it gone (404) instead of deleting nothing.

    PostgreSQL locks the rows; SQLite has one writer, whose lock a write statement that matches
    nothing takes (the transaction's reads then see what the previous writer committed)."""
    if session.bind.dialect.name == "sqlite":
        await session.execute(update(model).where(false()).values(uuid=model.uuid))
    else:
        await session.execute(select(model.uuid).where(model.uuid.in_(uuids)).with_for_update())
