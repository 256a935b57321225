"""The inline SQLite connection (orchestrator/db/sqlite_inline.py) on a real database file: a write
that must wait for another connection's lock waits off the event loop, which goes on meanwhile."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from orchestrator.db.engine import make_engine


async def test_a_write_waiting_for_the_lock_leaves_the_loop_running(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (n INTEGER)"))
        ticks = 0

        async def ticking() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        async with engine.connect() as holder:
            await holder.execute(text("INSERT INTO t VALUES (1)"))  # holds the write lock until commit
            ticker = asyncio.create_task(ticking())

            async def second() -> None:
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO t VALUES (2)"))

            waiting = asyncio.create_task(second())
            await asyncio.sleep(0.5)
            assert not waiting.done(), "the second writer waits for the lock"
            assert ticks >= 10, f"the loop ran {ticks} times in 0.5 s while it waited"
            async with engine.connect() as reader:  # WAL: a read does not wait for the writer
                assert (await reader.execute(text("SELECT count(*) FROM t"))).scalar() == 0
            await holder.commit()
            await asyncio.wait_for(waiting, 10)
            ticker.cancel()
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT n FROM t ORDER BY n"))).scalars().all() == [1, 2]
    finally:
        await engine.dispose()
