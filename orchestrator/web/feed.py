"""The change notification feed (spec §9.3): one JSON frame per change of a user's object.

The store tells: session events note every server, drive and job that a flush created,
changed or deleted (ORM bulk deletes included), and a commit publishes one frame per object to
that owner's subscribers, i.e. the WebSockets open at ``/websocket``.  A rollback publishes
nothing.  Frames carry the collection and URI; clients GET the object (after a deletion: 404).

With several API nodes on PostgreSQL, each commit's changes also go to the other nodes by
``NOTIFY`` (``orchestrator/db/notify.py``), which publish them to their own subscribers: a change
made through one node reaches a WebSocket open on any other.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import ORMExecuteState, Session

from orchestrator.db.models import Drive, Job, Server
from orchestrator.db.notify import MAX_PAYLOAD, Bus
from orchestrator.domain.uris import uri

WATCHED: dict[type, str] = {Server: "servers", Drive: "drives", Job: "jobs"}
Change = tuple[str, str, str]  # (owner uuid, collection, object uuid)
HANG_UP: dict[str, Any] = {}  # queued (by identity) to end a subscriber's socket: its user was disabled


class Feed:
    def __init__(self, backlog: int = 1000, node: str = "", bus: Bus | None = None) -> None:
        self.backlog = backlog
        self.subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self.node, self.bus = node, bus
        if bus is not None:
            bus.listeners.append(self._heard)

    def _heard(self, payload: str | None) -> None:
        """Another node's commit (this node's own were published at once)."""
        if payload is None:
            return
        node, changes = json.loads(payload)
        if node != self.node:
            self.publish(dict.fromkeys(tuple(c) for c in changes))

    def _tell_others(self, changes: dict[Change, None]) -> None:
        assert self.bus is not None
        batch: list[Change] = []
        for change in changes:
            batch.append(change)
            if len(batch) >= MAX_PAYLOAD // 100:  # uuids are 36 characters: two and a collection fit in 100
                self.bus.send(json.dumps([self.node, batch]))
                batch = []
        if batch:
            self.bus.send(json.dumps([self.node, batch]))

    def subscribe(self, user: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.backlog)
        self.subscribers[user].add(queue)
        return queue

    def unsubscribe(self, user: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.subscribers[user].discard(queue)
        if not self.subscribers[user]:
            del self.subscribers[user]

    def hang_up(self, users: set[str]) -> None:
        for user in users:
            for queue in self.subscribers.get(user, ()):
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(HANG_UP)

    def publish(self, changes: dict[Change, None]) -> None:
        for owner, collection, uuid in changes:
            frame = {"resource_type": collection, "resource_uri": uri(collection, uuid)}
            for queue in self.subscribers.get(owner, ()):
                if not queue.full():  # a reader that stopped reading loses frames, never blocks the store
                    queue.put_nowait(frame)

    def watch(self, session_class: type[Session]) -> None:
        def note(session: Session, changes: list[Change]) -> None:
            if self.subscribers or self.bus is not None:  # nobody listens: nothing to remember
                pending = session.info.setdefault("feed", {})
                pending.update(dict.fromkeys(c for c in changes if c[0] is not None))

        @event.listens_for(session_class, "after_flush")
        def _flushed(session: Session, _context: Any) -> None:
            objects = [*session.new, *(o for o in session.dirty if session.is_modified(o)), *session.deleted]
            note(session, [(o.owner_uuid, WATCHED[type(o)], o.uuid) for o in objects if type(o) in WATCHED])

        @event.listens_for(session_class, "do_orm_execute")
        def _bulk(state: ORMExecuteState) -> None:
            model = state.bind_mapper.class_ if state.bind_mapper is not None else None
            if not (state.is_delete or state.is_update) or model not in WATCHED or not (
                    self.subscribers or self.bus is not None):
                return
            rows = state.session.execute(select(model.owner_uuid, model.uuid).where(state.statement.whereclause))
            note(state.session, [(owner, WATCHED[model], uuid) for owner, uuid in rows])

        @event.listens_for(session_class, "after_commit")
        def _committed(session: Session) -> None:
            changes = session.info.pop("feed", None)
            if changes:
                self.publish(changes)
                if self.bus is not None:
                    self._tell_others(changes)

        @event.listens_for(session_class, "after_rollback")
        def _rolled_back(session: Session) -> None:
            session.info.pop("feed", None)
