"""Copy-on-write clones in the store: bases, which drives read through them, and which bases no
overlay needs any more (reference counting by the rows that name them).

A clone of a drive in a directory pool makes the source's image a read-only base (the volume
``base-<job uuid>.qcow2``) and both the source and the clone qcow2 overlays on it; a library
drive's image is shared as it is (one base per library drive, reused while any overlay needs it).
Flattening (``orchestrator/work/flatten.py``) copies a drive's chain into its own volume and clears
its ``base_uuid``; a base that neither a drive nor another base names is deleted.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Drive, VolumeBase


def base_volume(job_uuid: str) -> str:
    """The base a clone job makes: named after the job, so a retried job finds its own."""
    return f"base-{job_uuid}.qcow2"


async def library_base(s: AsyncSession, source: Drive) -> VolumeBase | None:
    """The base that shares a library drive's image on its host and pool, if one is kept."""
    return await s.scalar(select(VolumeBase).where(VolumeBase.origin_uuid == source.uuid,
                                                   VolumeBase.host == source.host, VolumeBase.pool == source.pool))


async def record_clone(s: AsyncSession, job_uuid: str, source: Drive, clone: Drive, base_volume_name: str) -> None:
    """Both sides of a copy-on-write clone are overlays on the base now (a library source stays
    what it is: nobody writes it)."""
    library = source.owner_uuid is None
    base = await library_base(s, source) if library else None
    if base is None:
        base = VolumeBase(uuid=job_uuid, host=source.host, pool=source.pool, volume=base_volume_name,
                          parent_uuid=None if library else source.base_uuid,
                          origin_uuid=source.uuid if library else None)
        s.add(base)
    if not library:
        source.base_uuid = base.uuid
    clone.base_uuid = base.uuid
    await s.flush()


async def unused_bases(s: AsyncSession) -> list[VolumeBase]:
    """The bases that no drive and no other base reads through any more."""
    used = select(Drive.base_uuid).where(Drive.base_uuid.is_not(None)).union(
        select(VolumeBase.parent_uuid).where(VolumeBase.parent_uuid.is_not(None)))
    return list((await s.scalars(select(VolumeBase).where(VolumeBase.uuid.not_in(used)))).all())


async def forget_base(s: AsyncSession, uuid: str) -> None:
    """A base whose volume was deleted: its row goes (and its own base may be unused now)."""
    await s.execute(delete(VolumeBase).where(VolumeBase.uuid == uuid))


async def overlays(s: AsyncSession, host: str) -> list[str]:
    """The drives on ``host`` whose volumes still read through a base."""
    return list((await s.scalars(select(Drive.uuid).where(Drive.host == host, Drive.base_uuid.is_not(None)))).all())
