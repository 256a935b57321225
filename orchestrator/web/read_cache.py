"""Rendered GET responses, reused until anything is written.

Clients poll hard (libcloud every 5 s, terraform, pycloudsigma every 3 s), and a GET costs
several database round trips.  With one API node on SQLite every write passes through this
process, so a single generation counter, bumped after each commit that wrote anything (and
when the agents' statistics change), tells when a rendered answer may be stale.  The command
line (``strato ips assign`` …) writes from another process, so entries also expire after
``max_age`` seconds.  With PostgreSQL other API nodes write too, so the cache is off there.
Keys carry the caller's uuid: one user's entry is never another's answer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session


class ReadCache:
    def __init__(self, enabled: bool, size: int = 4096, max_age: float = 2.0) -> None:
        self.enabled = enabled
        self.size = size
        self.max_age = max_age
        self.generation = 0
        self._entries: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        entry = self._entries.get(key) if self.enabled else None
        if entry is None or time.monotonic() - entry[0] > self.max_age:
            return None
        return entry[1]

    def put(self, key: Hashable, body: bytes, generation: int) -> None:
        """Keep ``body`` unless something was written since it was read (``generation``)."""
        if self.enabled and generation == self.generation:
            self._entries[key] = (time.monotonic(), body)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def bump(self) -> None:
        self.generation += 1
        self._entries.clear()

    def watch(self, session_class: type[Session]) -> None:
        """Bump after every commit of a session that wrote (ORM flushes or bulk statements)."""

        @event.listens_for(session_class, "after_flush")
        def _flushed(session: Session, _context: Any) -> None:
            session.info["wrote"] = True

        @event.listens_for(session_class, "do_orm_execute")
        def _executed(state: ORMExecuteState) -> None:
            if state.is_insert or state.is_update or state.is_delete:
                state.session.info["wrote"] = True

        @event.listens_for(session_class, "after_commit")
        def _committed(session: Session) -> None:
            if session.info.pop("wrote", False):
                self.bump()

        @event.listens_for(session_class, "after_rollback")
        def _rolled_back(session: Session) -> None:
            session.info.pop("wrote", None)


def cache_key(user: str, path_qs: str) -> Hashable:
    return (user, path_qs)
