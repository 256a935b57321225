"""Room in the storage pools (issue 16 item 10): thin drives may not promise more than a pool holds.

The drives of one pool (its host and name) may add up, in virtual size, to at most the pool's
capacity times ``storage_overcommit`` (default 1.0: every drive can be filled to the last byte),
and what one transaction adds to a pool (new drives, growth) must fit in the pool's free space.
Capacity and free space are the figures the host's agent last reported (the host's facts,
refreshed by the host watch).  Checked like the quotas, in the write's own transaction, whichever
path grows a drive (create, resize, clone, upload): a session class watched by :func:`watch`
notes each flush's growing drives and, just before the commit, sums the pools they are in; over
the limit, the commit is refused (403, ``error_point`` ``size``) and nothing is written.
Library drives count too: they take room in the pool like any other.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import event, func, inspect, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Drive, Host
from orchestrator.domain.errors import DomainError, forbidden

KEY = "grown_pools"
Pool = tuple[str, str]  # (host, pool name)


def _growth(drive: Drive) -> int:
    """Bytes the drive now promises in its pool beyond what it did before this flush."""
    state = inspect(drive)
    if state.pending or any(state.attrs[name].history.added for name in ("host", "pool")):
        return drive.size or 0  # new here (or moved here)
    history = state.attrs["size"].history
    if history.added and history.deleted:
        return max(0, (history.added[0] or 0) - (history.deleted[0] or 0))
    return 0


def check(s: Session, pool: Pool, added: int, overcommit: float) -> None:
    host, name = pool
    facts = s.scalar(select(Host.facts).where(Host.name == host)) or {}
    figures = next((p for p in facts.get("pools", []) if p.get("name") == name), None)
    if figures is None:  # a pool its host never reported: placement refuses it already
        return
    promised = s.scalar(select(func.coalesce(func.sum(Drive.size), 0)).where(Drive.host == host, Drive.pool == name))
    limit = int(figures.get("capacity", 0) * overcommit)
    if (promised or 0) > limit:
        raise forbidden(f"Not enough storage: the drives on this host's pool would take {promised} bytes of the "
                        f"{limit} it may hold", "size")
    if added > figures.get("available", 0):
        raise forbidden(f"Not enough storage: {added} bytes more do not fit in the {figures.get('available', 0)} "
                        "bytes free on this host's pool", "size")


def watch(session_class: type[Session], overcommit: float) -> None:
    @event.listens_for(session_class, "after_flush")
    def _note(s: Session, _context: Any) -> None:
        grown: defaultdict[Pool, int] = s.info.setdefault(KEY, defaultdict(int))
        for drive in (*s.new, *s.dirty):
            if (type(drive) is Drive and drive.host is not None and drive.pool is not None
                    and (growth := _growth(drive)) > 0):
                grown[(drive.host, drive.pool)] += growth

    @event.listens_for(session_class, "before_commit")
    def _check(s: Session) -> None:
        s.flush()
        grown = s.info.pop(KEY, {})
        with s.no_autoflush:
            errors = []
            for pool, added in sorted(grown.items()):
                try:
                    check(s, pool, added, overcommit)
                except DomainError as err:
                    errors.append(err)
            if errors:
                raise DomainError.collect(errors)

    @event.listens_for(session_class, "after_rollback")
    def _forget(s: Session) -> None:
        s.info.pop(KEY, None)
