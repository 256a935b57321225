"""Issue 12: a command line that queues work wakes the SQLite installation's API node at its
commit (a datagram to the node's socket beside the database file), not before, and none is lost
when no node runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from orchestrator.db.engine import make_engine, make_sessionmaker, sqlite_url
from orchestrator.db.wake import Wakeups, socket_path, wake_at_commit


async def _scenario(db: Path) -> None:
    url = sqlite_url(db)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions.begin() as s:  # no node listening: the commit goes through all the same
            await wake_at_commit(s)
            await s.execute(text("CREATE TABLE queued (n INTEGER)"))
        node = Wakeups(f"sqlite:///{db}")
        await node.start()
        assert socket_path(url) == db.with_name("strato.db.wake") and db.with_name("strato.db.wake").exists()
        try:
            async with sessions.begin() as s:
                await wake_at_commit(s)
                await s.execute(text("INSERT INTO queued VALUES (1)"))
                await asyncio.sleep(0.2)
                assert not node.event.is_set()  # not before the commit: the node would find nothing yet
            await asyncio.wait_for(node.event.wait(), 5)
            await node.wait(0)
            assert not node.event.is_set()  # cleared for the next look
            async with sessions.begin() as s:  # rolled back: nobody woken
                await wake_at_commit(s)
                await s.execute(text("INSERT INTO queued VALUES (2)"))
                await s.rollback()
            await asyncio.sleep(0.2)
            assert not node.event.is_set()
        finally:
            await node.stop()
        assert not db.with_name("strato.db.wake").exists()
    finally:
        await engine.dispose()


def test_a_commit_wakes_the_node(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path / "strato.db"))
