"""Hot reads below SQLAlchemy's per-statement machinery: a Core ``SELECT`` compiled once and run
on the driver's own connection, its rows returned as the driver gives them.

Executing a statement through SQLAlchemy (cache key, compiled-cache lookup, execution context,
result metadata, row processors, the greenlet hop of the async adapter) cost about 0.2 ms per
statement in bench/api.py's profile, several times the statement itself: most of an uncached
``GET /servers/{uuid}/``.  The statements the API runs on every request (a row, a page, the
user's ``disabled`` flag) are few and fixed, so they are compiled once per statement object
(:meth:`Reads.fetch` with ``prepared``) and run here:

* SQLite: on one connection of the engine's pool kept for reads, inline on the event loop (as
  ``sqlite_inline`` runs every statement); in WAL mode a read never waits for a writer, and each
  statement outside a transaction reads the latest commit.
* PostgreSQL: on a small asyncpg pool of its own, where asyncpg prepares each statement once per
  connection (its statement cache) and reuses it.

Values come back as the driver holds them (SQLite: booleans as 0/1, datetimes as text, JSON as
text); converting them is the reader's business (``orchestrator/api/rows.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select

from orchestrator.db import sqlite_inline
from orchestrator.db.notify import asyncpg_dsn

PG_POOL = (8, 8)  # asyncpg connections for reads (min, max), all opened at start: none is made mid-load


@dataclass(frozen=True)
class Compiled:
    sql: str
    names: tuple[str, ...]           # the parameters in the order the driver takes them
    defaults: Mapping[str, Any]      # values bound in the statement itself (literals, limits)
    processors: Mapping[str, Any]    # SQLAlchemy's bind processors (a type's Python → driver value)

    def args(self, params: Mapping[str, Any] | None) -> list[Any]:
        out = []
        for name in self.names:
            value = params[name] if params is not None and name in params else self.defaults[name]
            processor = self.processors.get(name)
            out.append(processor(value) if processor is not None else value)
        return out


class Reads:
    """Runs read statements on the driver's connection; one per engine, opened with the app."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._prepared: dict[Select[Any], Compiled] = {}

    @staticmethod
    async def open(engine: AsyncEngine) -> Reads:
        if engine.dialect.name == "sqlite":
            return await SqliteReads.open(engine)
        if engine.dialect.name == "postgresql":
            return await PgReads.open(engine)
        raise ValueError(f"no raw reads for {engine.dialect.name}")

    async def close(self) -> None:
        raise NotImplementedError

    def compile(self, stmt: Select[Any], *, prepared: bool = False) -> Compiled:
        """``stmt`` as SQL for this dialect; ``prepared``: compiled once, kept by the statement
        object (a module's constant statement; parameters as ``bindparam`` by name)."""
        if prepared and (done := self._prepared.get(stmt)) is not None:
            return done
        # render_postcompile: IN lists become one parameter per value, as the driver wants them.
        compiled = stmt.compile(dialect=self.dialect, compile_kwargs={"render_postcompile": True})
        names = tuple(compiled.positiontup or ())
        done = Compiled(str(compiled), names, {n: compiled.params.get(n) for n in names},
                        {n: p for n, p in compiled._bind_processors.items() if n in names})
        if prepared:
            self._prepared[stmt] = done
        return done

    async def fetch(self, stmt: Select[Any], params: Mapping[str, Any] | None = None, *,
                    prepared: bool = False) -> list[Sequence[Any]]:
        compiled = self.compile(stmt, prepared=prepared)
        return await self._fetch(compiled.sql, compiled.args(params))

    async def _fetch(self, sql: str, args: list[Any]) -> list[Sequence[Any]]:
        raise NotImplementedError


class SqliteReads(Reads):
    def __init__(self, engine: AsyncEngine, conn: AsyncConnection, raw: Any) -> None:
        super().__init__(engine.dialect)
        self._conn, self._raw = conn, raw

    @classmethod
    async def open(cls, engine: AsyncEngine) -> SqliteReads:
        # A connection of the engine's own pool, checked out for good: the same database whatever
        # the URL (a file, a shared in-memory one), with the pragmas every connection gets.
        conn = await engine.connect()
        raw = (await conn.get_raw_connection()).driver_connection
        assert isinstance(raw, sqlite_inline.Connection), "SQLite engines use sqlite_inline connections"
        return cls(engine, conn, raw)

    async def close(self) -> None:
        await self._conn.close()

    async def _fetch(self, sql: str, args: list[Any]) -> list[Sequence[Any]]:
        return await self._raw.fetch(sql, args)


async def _kept(_conn: asyncpg.Connection) -> None:
    """No reset when a connection goes back to the pool: asyncpg's own (``RESET ALL``, ``UNLISTEN *``,
    ...) is a round trip per read, and these connections run nothing but reads."""


class PgReads(Reads):
    def __init__(self, engine: AsyncEngine, pool: asyncpg.Pool) -> None:
        super().__init__(engine.dialect)
        self._pool = pool

    @classmethod
    async def open(cls, engine: AsyncEngine) -> PgReads:
        url = engine.url.render_as_string(hide_password=False)
        pool = await asyncpg.create_pool(asyncpg_dsn(url), min_size=PG_POOL[0], max_size=PG_POOL[1], reset=_kept)
        return cls(engine, pool)

    async def close(self) -> None:
        await self._pool.close()

    async def _fetch(self, sql: str, args: list[Any]) -> list[Sequence[Any]]:
        async with self._pool.acquire() as conn:
            return await conn.fetch(sql, *args)  # type: ignore[no-any-return]
