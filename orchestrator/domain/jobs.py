"""Jobs (spec §32): long operations with progress, linked to the objects they touch.

Every operation the API node runs after answering its request leaves a job (issue 11): it ends
``success``, or ``failed`` with a reason its owner can read (``Reasons``: the host's message, one
line, with no host path outside this installation's data directory).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from orchestrator.db.models import Job, JobLink, new_uuid
from orchestrator.domain.uris import uri

# Operations whose jobs the objects list in ``jobs`` from the start, as upstream shows them.  The
# others (server_start, drive_create, drive_resize) are listed there once they failed: an object
# upstream shows with ``jobs: []`` keeps showing so while all goes well.
LISTED = frozenset({"drive_clone", "server_clone", "drive_upload"})


def new_job(s: AsyncSession, owner: str, operation: str, collection: str, source: str, target: str | None = None,
            parent: Job | None = None) -> Job:
    """A ``started`` job on ``source`` (and the ``target`` it fills), linked from both when ``LISTED``."""
    touched = [source] if target is None else [source, target]
    job = Job(uuid=new_uuid(), owner_uuid=owner, operation=operation, state="started", progress=0,
              resources=[uri(collection, u) for u in touched], source_uuid=source, target_uuid=target,
              parent_uuid=parent.uuid if parent else None)
    s.add(job)
    if operation in LISTED:
        s.add_all([JobLink(job_uuid=job.uuid, res_uuid=u) for u in touched])
    return job


async def finish_parent(s: AsyncSession, job: Job) -> Job | None:
    """Update a child job's parent from its children; the parent once it has just finished."""
    if job.parent_uuid is None:
        return None
    parent = await s.scalar(select(Job).where(Job.uuid == job.parent_uuid).options(selectinload(Job.children)))
    if parent is None:
        return None
    states = [child.state for child in parent.children]
    parent.progress = 100 * sum(state != "started" for state in states) // len(states)
    if "started" in states:
        return None
    parent.state = "failed" if "failed" in states else "success"
    return parent


async def running_clones(s: AsyncSession) -> list[Job]:
    return list((await s.scalars(select(Job).where(Job.state == "started", Job.operation == "drive_clone"))).all())


async def still_cloning(s: AsyncSession, drive_uuid: str) -> bool:
    """Whether a running clone job reads this drive."""
    return await s.scalar(select(Job.uuid).where(Job.source_uuid == drive_uuid, Job.state == "started",
                                                 Job.operation == "drive_clone").limit(1)) is not None


async def started(s: AsyncSession, operation: str, source_uuid: str) -> list[Job]:
    """The ``started`` jobs of this operation on an object."""
    return list((await s.scalars(select(Job).where(
        Job.source_uuid == source_uuid, Job.operation == operation, Job.state == "started"))).all())


def finish(job: Job, error: str | None = None) -> None:
    """``success``, or ``failed`` with the reason."""
    if error is None:
        job.state, job.progress = "success", 100
    else:
        job.state, job.error = "failed", error


async def finish_started(s: AsyncSession, operation: str, source_uuid: str, error: str | None = None) -> None:
    """End the object's started jobs of this operation; a failure is listed on the object from now on."""
    for job in await started(s, operation, source_uuid):
        finish(job, error)
        if error is not None and operation not in LISTED:
            s.add(JobLink(job_uuid=job.uuid, res_uuid=source_uuid))


def record_fault(s: AsyncSession, owner: str, server_uuid: str, reason: str) -> Job:
    """A server stopped without being asked (its QEMU died, its host lost it): a ``server_fault``
    job, ``failed`` with the reason, listed in the server's ``jobs`` (Nova's instance faults)."""
    job = new_job(s, owner, "server_fault", "servers", server_uuid)
    finish(job, reason)
    s.add(JobLink(job_uuid=job.uuid, res_uuid=server_uuid))
    return job


async def purge(s: AsyncSession, older_than: timedelta, now: datetime) -> int:
    """Remove the finished jobs untouched for ``older_than`` (with their children and links); a job
    still ``started``, or whose family still has one, is never removed.  Returns how many went."""
    cutoff = now - older_than
    old = select(Job.uuid).where(Job.parent_uuid.is_(None), Job.state != "started", Job.last_modified < cutoff)
    busy = select(Job.parent_uuid).where(Job.parent_uuid.is_not(None), Job.state == "started")
    roots = list((await s.scalars(old.where(Job.uuid.not_in(busy)))).all())
    if not roots:
        return 0
    family = roots + list((await s.scalars(select(Job.uuid).where(Job.parent_uuid.in_(roots)))).all())
    await s.execute(delete(JobLink).where(JobLink.job_uuid.in_(family)))
    await s.execute(delete(Job).where(Job.parent_uuid.in_(roots)))
    await s.execute(delete(Job).where(Job.uuid.in_(roots)))
    return len(roots)


_PATH = re.compile(r"(?<![\w.~])/[^\s'\"`,;:()\[\]{}<>]+")
MAX_REASON = 500
SYSTEM = ("/usr", "/bin", "/sbin")  # programs a message names (qemu-img): nobody's data


@dataclass(frozen=True)
class Reasons:
    """How a host's error reads to the job's owner: the message only (no traceback, no error kind),
    on one line, and every host path outside the installation's own directories replaced."""

    own: tuple[str, ...]  # absolute directories whose paths may show (the data directory)

    @classmethod
    def under(cls, directories: Iterable[os.PathLike[str] | str]) -> Reasons:
        roots = {os.path.abspath(d) for d in directories} | {os.path.realpath(d) for d in directories}
        return cls(tuple(sorted(roots | set(SYSTEM))))

    def of(self, err: BaseException | str) -> str:
        text = err if isinstance(err, str) else getattr(err, "message", None) or str(err) or type(err).__name__
        if isinstance(err, ConnectionError):  # the host's agent or its channel went away mid-operation
            text = f"The connection to the host was lost during the operation ({text}); try again"
        text = " ".join(str(text).split())  # one line, whatever the host printed
        text = _PATH.sub(lambda m: m[0] if self._own(m[0]) else "[host path]", text)
        return text if len(text) <= MAX_REASON else text[:MAX_REASON - 1] + "…"

    def _own(self, path: str) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in self.own)
