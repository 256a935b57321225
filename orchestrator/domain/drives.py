"""Rules for drives (spec §18–§20): status from attachments, size rounding, delete checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Drive, Server, ServerDrive, new_uuid
from orchestrator.domain.capabilities import Capabilities
from orchestrator.domain.errors import forbidden, invalid
from orchestrator.domain.jobs import new_job
from orchestrator.domain.lifecycle import Status
from orchestrator.domain.placement import DrivePlacer, Scheduler
from orchestrator.domain.tagging import forget_resources, set_resource_tags

IDLE = frozenset({"mounted", "unmounted"})
EDITABLE_WHILE_IN_USE = frozenset({"name", "meta", "tags", "allow_multimount"})  # spec §20.5
ALLOCATION = 4096  # sizes round up to whole 4 KiB blocks (spec §20.4)


def round_size(size: int) -> int:
    return -(-size // ALLOCATION) * ALLOCATION


def check_size(caps: Capabilities, storage_type: str, size: int, point: str = "size") -> None:
    limits = caps.drive_size(storage_type)
    if not limits["min"] <= size <= limits["max"]:
        raise invalid(f"size must be between {limits['min']} and {limits['max']} bytes for {storage_type}", point)


async def refresh_mount_status(s: AsyncSession, drive_uuids: set[str]) -> None:
    """Idle drives are ``mounted`` while any server lists them, else ``unmounted``."""
    if not drive_uuids:
        return
    attached = set((await s.scalars(select(ServerDrive.drive_uuid).where(
        ServerDrive.drive_uuid.in_(drive_uuids)))).all())
    for drive in (await s.scalars(select(Drive).where(Drive.uuid.in_(drive_uuids)))).all():
        if drive.status in IDLE and drive.owner_uuid is not None:  # library drives stay "unmounted" (§23)
            drive.status = "mounted" if drive.uuid in attached else "unmounted"


async def active_server(s: AsyncSession, drive_uuid: str) -> str | None:
    """A server that lists the drive and is not stopped, if any."""
    return await s.scalar(select(Server.uuid).join(ServerDrive, ServerDrive.server_uuid == Server.uuid).where(
        ServerDrive.drive_uuid == drive_uuid, Server.status != Status.STOPPED).limit(1))


async def check_deletable(s: AsyncSession, drive: Drive) -> None:
    """Deletable when idle (or uploading, or the target of a copy, which the delete cancels) and
    attached only to stopped servers (spec §20.8)."""
    if drive.status not in IDLE | {"uploading", "cloning_dst"}:
        raise forbidden(f'Cannot delete drive in status "{drive.status}"')
    busy = await active_server(s, drive.uuid)
    if busy is not None:
        raise forbidden(f"Drive {drive.uuid} is attached to server {busy}, which is not stopped")


async def write_drive(s: AsyncSession, drive: Drive, values: dict[str, Any], caps: Capabilities, owner: str,
                      *, strict: bool) -> bool:
    """Apply validated edits; True when a resize must run.  While the drive is in use by a
    server that is not stopped, other keys are ignored (PUT) or refused (``strict``, resize)."""
    if "storage_type" in values and values.pop("storage_type") not in (None, drive.storage_type):
        raise invalid("storage_type cannot change after creation", "storage_type")
    busy = await active_server(s, drive.uuid)
    if busy is not None:
        blocked = sorted(k for k in values if k not in EDITABLE_WHILE_IN_USE)
        if strict and blocked:
            raise forbidden(f"Drive {drive.uuid} is attached to server {busy}, which is not stopped")
        values = {k: v for k, v in values.items() if k in EDITABLE_WHILE_IN_USE}
    resized = False
    if "size" in values:
        size = values["size"] = round_size(values["size"])
        check_size(caps, drive.storage_type, size)
        if size < drive.size:
            raise invalid("Drives cannot shrink", "size")
        if size != drive.size:
            if drive.status not in IDLE:
                raise forbidden(f'Cannot resize drive in status "{drive.status}"')
            drive.status, resized = "resizing", True
            new_job(s, drive.owner_uuid, "drive_resize", "drives", drive.uuid)
    if "tags" in values:
        await set_resource_tags(s, "drives", drive.uuid, values.pop("tags"), owner)
    for key, value in values.items():
        setattr(drive, key, value)
    return resized


Volume = tuple[str | None, str | None, str | None]  # (host, pool, volume name)
NEW_VOLUME_JOBS = {"creating": "drive_create", "uploading": "drive_upload"}  # a clone's job is its plan's


async def delete_drives(s: AsyncSession, drives: list[Drive]) -> list[Volume]:
    """Delete the rows; returns the volumes for the storage hosts to delete after commit."""
    for drive in drives:
        await check_deletable(s, drive)
    ids = [drive.uuid for drive in drives]
    # Drives attached to stopped servers leave those servers' lists (spec §20.8).
    await s.execute(delete(ServerDrive).where(ServerDrive.drive_uuid.in_(ids)))
    await forget_resources(s, ids)
    await s.execute(delete(Drive).where(Drive.uuid.in_(ids)))
    return [(d.host, d.pool, d.volume) for d in drives]


async def discard_failed(s: AsyncSession, drive: Drive) -> None:
    """A drive whose volume never came to be (its create or import failed on the host): nothing
    half-done is left; its job says why."""
    await s.execute(delete(ServerDrive).where(ServerDrive.drive_uuid == drive.uuid))
    await forget_resources(s, [drive.uuid])
    await s.delete(drive)


async def new_drive(s: AsyncSession, scheduler: Scheduler, owner: str, *, status: str, avoid: Sequence[str],
                    near: Drive | None = None, placer: DrivePlacer | None = None, **columns: Any) -> Drive:
    """A new drive row with its volume's name, placed on a storage host: by the scheduler (pool
    by storage type, room, ``avoid``; 503 when none has room), or next to the drive ``near``
    (a cheap copy on the same host).  ``placer``: one of many new drives, whose placement
    inputs were read for all (``Scheduler.drive_placer`` with the same ``avoid``)."""
    uuid = new_uuid()
    drive = Drive(uuid=uuid, owner_uuid=owner, status=status, avoid=list(avoid), volume=f"{uuid}.qcow2", **columns)
    s.add(drive)
    if status in NEW_VOLUME_JOBS:  # the work that makes its volume says on this job how it went
        new_job(s, owner, NEW_VOLUME_JOBS[status], "drives", uuid)
    if placer is not None:
        placer.place(drive)
    elif near is None:
        await scheduler.place_drive(s, drive, avoid)
    else:
        drive.host, drive.pool = near.host, near.pool
    return drive
