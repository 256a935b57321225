"""Jobs (spec §32): long operations with progress, linked to the objects they touch."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from orchestrator.db.models import Job, JobLink, new_uuid
from orchestrator.domain.uris import uri


def new_job(s: AsyncSession, owner: str, operation: str, collection: str, source: str, target: str | None = None,
            parent: Job | None = None) -> Job:
    """A ``started`` job on ``source`` (and the ``target`` it fills), linked from both."""
    touched = [source] if target is None else [source, target]
    job = Job(uuid=new_uuid(), owner_uuid=owner, operation=operation, state="started", progress=0,
              resources=[uri(collection, u) for u in touched], source_uuid=source, target_uuid=target,
              parent_uuid=parent.uuid if parent else None)
    s.add(job)
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
