"""SQLite for the async engine without a thread hop per call.

aiosqlite runs every call (cursor, execute, fetchall, close, commit, rollback) on a thread of its
own and waits for the answer: four round trips per statement, each a GIL hand-over, which cost
about 1 ms under load (bench/api.py's profile), far more than the statement.  This shim speaks
the part of aiosqlite's interface SQLAlchemy's ``sqlite+aiosqlite`` dialect uses, and runs each
call on the event loop's own thread, where a statement on a small database takes microseconds.

A commit runs on a worker thread (it may checkpoint the WAL and sync the file to disk).  The
other thing that may not run on the loop is a wait: a statement that needs the write lock another
connection (of this process or another) holds.  So the connection's busy timeout is 0 and a
statement SQLite answers ``SQLITE_BUSY`` is tried again after a short ``asyncio.sleep``, while the
loop goes on (the holder of the lock may be a coroutine of this loop).  Reads in WAL mode never
wait for a writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
BUSY_TIMEOUT = 30.0  # seconds a statement waits for the write lock, as the engine's timeout was


SQLITE_BUSY_SNAPSHOT = 517  # a stale snapshot: waiting cannot help, the transaction must restart


def _busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None) or 0
    return code & 0xFF == sqlite3.SQLITE_BUSY and code != SQLITE_BUSY_SNAPSHOT


async def _run(call: Callable[[], T], *, offload: bool = False) -> T:
    """``call()`` here; while SQLite is busy (another connection holds the write lock), again
    after a short sleep that lets the loop run, the holder among its coroutines, for up to
    ``BUSY_TIMEOUT`` seconds.  SQLite's own busy handler would sleep up to 100 ms per try,
    and on the loop's thread block everything meanwhile."""
    delay, deadline = 0.0005, time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return await asyncio.to_thread(call) if offload else call()
        except sqlite3.OperationalError as e:
            if not _busy(e) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.01)


class Cursor:
    """aiosqlite's Cursor, inline."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._cursor = conn.cursor()

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        cursor = self._cursor
        await _run(lambda: cursor.execute(sql, parameters or ()))
        return self

    async def executemany(self, sql: str, parameters: Sequence[Sequence[Any]]) -> Cursor:
        cursor, rows = self._cursor, list(parameters)  # a generator could not be run twice
        await _run(lambda: cursor.executemany(sql, rows))
        return self

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _CursorContext:
    """What ``connection.cursor()`` returns in aiosqlite: awaitable and an async context manager."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __await__(self) -> Any:
        return self.__aenter__().__await__()

    async def __aenter__(self) -> Cursor:
        return Cursor(self._conn)

    async def __aexit__(self, *_exc: object) -> None:
        return None


class _Inline:
    """aiosqlite's request queue (the dialect's isolation-level setter puts calls on it): run now."""

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, call = item
        try:
            future.set_result(call())
        except Exception as e:  # handed to the awaiting caller, as aiosqlite's thread does
            future.set_exception(e)


class Connection:
    """aiosqlite's Connection as SQLAlchemy's aiosqlite dialect uses it, inline."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = self._connection = conn
        self._tx = _Inline()

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> _CursorContext:
        return _CursorContext(self._conn)

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        return await Cursor(self._conn).execute(sql, parameters)

    async def commit(self) -> None:
        # On a worker thread: a commit may checkpoint the WAL into the database file and sync it,
        # which on a busy disk takes long enough to stall every request on the loop.
        await _run(self._conn.commit, offload=True)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def fetch(self, sql: str, parameters: Sequence[Any]) -> list[Any]:
        """Every row of a read statement, at once (``orchestrator/db/reads.py``: no cursor kept
        across an ``await``, so one connection serves every coroutine's reads)."""
        conn = self._conn
        return await _run(lambda: conn.execute(sql, parameters).fetchall())

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    async def close(self) -> None:
        if self._connection is not None:
            self._conn.close()
            self._connection = None

    def stop(self) -> None:
        if self._connection is not None:
            self._conn.close()
            self._connection = None


def connector(database: str, uri: bool = False) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``: a new inline connection to ``database``."""

    async def connect() -> Connection:
        # check_same_thread off: the pool may close a connection from another thread (at exit).
        return Connection(sqlite3.connect(database, timeout=0, uri=uri, check_same_thread=False,
                                          isolation_level=""))

    return connect
