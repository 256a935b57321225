"""Per-user quotas (issue 16 item 10): servers, CPU and memory over all servers, drive storage,
open console tunnels — each null (no limit) unless the operator set it (``strato quotas set``).

Checked in the same transaction as the write, whichever code path made it: a session class
watched by :func:`watch` notes at each flush whose servers or drives grew (a new row, more
``cpu``/``mem``/``size``) and, just before the commit, sums those owners' rows as the transaction
sees them; over a limit, the commit is refused (403 ``permission``, the limit in ``error_point``)
and nothing is written.  Shrinking or renaming is never refused, even above a lowered limit.
Tunnels live in the API node's memory: ``open_vnc``/``open_console`` check them themselves.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, func, inspect, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Drive, Quota, Server
from orchestrator.domain.errors import DomainError, forbidden

GROWING = {Server: ("cpu", "mem"), Drive: ("size",)}
KEY = "quota_owners"


def usage(s: Session, owner: str) -> dict[str, int]:
    totals = select(func.count(), func.coalesce(func.sum(Server.cpu), 0), func.coalesce(func.sum(Server.mem), 0))
    servers, cpu, mem = s.execute(totals.where(Server.owner_uuid == owner)).one()
    storage = s.scalar(select(func.coalesce(func.sum(Drive.size), 0)).where(Drive.owner_uuid == owner))
    return {"servers": servers, "cpu": cpu, "mem": mem, "storage": storage or 0}


def check(s: Session, owner: str) -> None:
    quota = s.get(Quota, owner)
    if quota is None:
        return
    used = usage(s, owner)
    errors = [forbidden(f"Quota exceeded: {name} {used[name]} of {limit}", name)
              for name in ("servers", "cpu", "mem", "storage")
              if (limit := getattr(quota, name)) is not None and used[name] > limit]
    if errors:
        raise DomainError.collect(errors)


def _grew(obj: Any) -> bool:
    state = inspect(obj)
    for name in GROWING[type(obj)]:
        history = state.attrs[name].history
        if history.added and (not history.deleted or (history.added[0] or 0) > (history.deleted[0] or 0)):
            return True
    return False


def watch(session_class: type[Session]) -> None:
    @event.listens_for(session_class, "after_flush")
    def _note(s: Session, _context: Any) -> None:
        owners = s.info.setdefault(KEY, set())
        for obj in s.new:
            if type(obj) in GROWING and obj.owner_uuid is not None:
                owners.add(obj.owner_uuid)
        for obj in s.dirty:
            if type(obj) in GROWING and obj.owner_uuid is not None and _grew(obj):
                owners.add(obj.owner_uuid)

    @event.listens_for(session_class, "before_commit")
    def _check(s: Session) -> None:
        s.flush()  # the rest of the transaction's changes, noted by _note
        owners = s.info.pop(KEY, set())
        with s.no_autoflush:
            for owner in sorted(owners):
                check(s, owner)

    @event.listens_for(session_class, "after_rollback")
    def _forget(s: Session) -> None:
        s.info.pop(KEY, None)


def report(s: Session, owner: str, tunnels: int) -> dict[str, dict[str, int | None]]:
    """Each quota's limit and what the user holds (``/capabilities/``: where clients read limits);
    ``tunnels``: the user's open consoles (kept in the API node's memory, not the store)."""
    quota = s.get(Quota, owner)
    used = {**usage(s, owner), "tunnels": tunnels}
    return {name: {"limit": getattr(quota, name) if quota else None, "used": used[name]}
            for name in ("servers", "cpu", "mem", "storage", "tunnels")}
