"""Planning clones (spec §15, §20.7, §22): the rows, statuses and jobs, in the caller's transaction.

The copying itself happens afterwards, in ``orchestrator/work/clones.py``.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Drive, Job, Server, ServerDrive, User, new_uuid, utcnow
from orchestrator.domain.capabilities import Capabilities
from orchestrator.domain.clone_naming import clone_name
from orchestrator.domain.drives import IDLE, active_server, check_size, new_drive, round_size
from orchestrator.domain.errors import forbidden, invalid
from orchestrator.domain.jobs import new_job
from orchestrator.domain.lifecycle import Status, check
from orchestrator.domain.networks import sync_vlan_members
from orchestrator.domain.placement import Scheduler
from orchestrator.domain.servers import COLUMNS, new_mac
from orchestrator.domain.tagging import set_resource_tags

CLONE_KEYS = ("name", "media", "size", "storage_type", "affinities", "meta", "tags", "allow_multimount")


async def naming(s: AsyncSession, owner: str) -> str:
    return (await s.get(User, owner)).clone_naming  # type: ignore[union-attr]


async def check_clone_source(s: AsyncSession, drive: Drive) -> None:
    """Idle (or already a clone source) and not in use by a running server (spec §20.7).
    Library drives (no owner) are always cloneable."""
    if drive.owner_uuid is None:
        return
    if drive.status not in IDLE | {"cloning_src"}:
        raise forbidden(f'Cannot clone drive in status "{drive.status}"')
    busy = await active_server(s, drive.uuid)
    if busy is not None:
        raise forbidden(f"Drive {drive.uuid} is attached to server {busy}, which is not stopped")


async def plan_drive_clone(s: AsyncSession, source: Drive, values: dict[str, Any], caps: Capabilities,
                           scheduler: Scheduler, avoid: Sequence[str], parent: Job | None = None,
                           owner: str | None = None, library: dict[str, Any] | None = None) -> tuple[Drive, Job]:
    """A new drive in ``cloning_dst`` (placed, honouring ``avoid``) and its ``drive_clone`` job.

    ``owner`` is the caller when the source is a library drive, whose catalogue attributes
    (``library``) are copied into the clone's meta (spec §20.7)."""
    await check_clone_source(s, source)
    owner = owner or source.owner_uuid
    assert owner is not None
    size = round_size(values.get("size") or source.size)
    if size < source.size:
        raise invalid(f"A clone cannot be smaller than its source ({source.size} bytes)", "size")
    storage_type = values.get("storage_type") or source.storage_type
    if storage_type not in caps.storage_types:
        raise invalid(f"storage_type {storage_type!r} is not offered", "storage_type")
    check_size(caps, storage_type, size)
    name = values.get("name") or clone_name(source.name, await naming(s, owner), utcnow())
    meta = values.get("meta", {**dict(source.meta), **(library or {})})
    # Without avoid (or another storage type) the copy stays next to its source (a cheap copy on
    # the host); otherwise it is placed like a new drive of its type.
    near = None if avoid or storage_type != source.storage_type else source
    clone = await new_drive(s, scheduler, owner, status="cloning_dst", avoid=avoid, near=near, name=name, size=size,
                            media=values.get("media", source.media), storage_type=storage_type,
                            affinities=values.get("affinities", list(source.affinities)),
                            allow_multimount=values.get("allow_multimount", source.allow_multimount),
                            iops=source.iops, meta=meta, licenses=list(source.licenses))
    uuid = clone.uuid
    if source.owner_uuid is not None:  # library drives always show "unmounted" (spec §23)
        source.status = "cloning_src"
    job = new_job(s, owner, "drive_clone", "drives", source.uuid, uuid, parent)
    await s.flush()
    if "tags" in values:
        await set_resource_tags(s, "drives", uuid, values["tags"], owner)
    return clone, job


async def plan_server_clone(s: AsyncSession, source: Server, body: dict[str, Any], caps: Capabilities,
                            scheduler: Scheduler, avoid: Sequence[str]) -> tuple[Server, list[Job]]:
    """The new server (stopped, new MACs, DHCP instead of static/manual IPs), its disks' clones
    attached at the same channels, cdroms shared; returns it and the drive clone jobs."""
    check(source, "clone")
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid("name must be a string", "name")
    uuid = new_uuid()
    clone = Server(uuid=uuid, owner_uuid=source.owner_uuid, smp=source.smp, smp_auto=source.smp_auto,
                   status=Status.STOPPED, nics=[], gpus=list(source.gpus), epcs=list(source.epcs),
                   pubkeys=list(source.pubkeys), drive_links=[],
                   **{key: getattr(source, key) for key in COLUMNS})
    clone.name = name or clone_name(source.name, await naming(s, source.owner_uuid), utcnow())
    if body.get("random_vnc_password"):
        clone.vnc_password = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(8))
    clone.nics = [{**nic, "mac": new_mac(),
                   "ip_v4_conf": _dhcp(nic["ip_v4_conf"]), "ip_v6_conf": _dhcp(nic["ip_v6_conf"])}
                  for nic in source.nics]
    s.add(clone)
    await sync_vlan_members(s, uuid, [nic["vlan"] for nic in clone.nics if nic["vlan"]])
    parent = new_job(s, source.owner_uuid, "server_clone", "servers", source.uuid, uuid)
    drives = {d.uuid: d for d in (await s.scalars(select(Drive).where(
        Drive.uuid.in_([a.drive_uuid for a in source.drive_links])))).all()}
    jobs = []
    for position, attachment in enumerate(source.drive_links):
        drive = drives[attachment.drive_uuid]
        target = drive.uuid
        if drive.media == "disk":
            copy, job = await plan_drive_clone(s, drive, {}, caps, scheduler, avoid, parent)
            target = copy.uuid
            jobs.append(job)
        clone.drive_links.append(ServerDrive(server_uuid=uuid, position=position, drive_uuid=target,
                                             device=attachment.device, dev_channel=attachment.dev_channel,
                                             boot_order=attachment.boot_order))
    await s.flush()
    await set_resource_tags(s, "servers", uuid, [t.tag_uuid for t in source.tag_links], source.owner_uuid)
    if not jobs:
        parent.state, parent.progress = "success", 100
    return clone, jobs


def _dhcp(conf: dict[str, Any] | None) -> dict[str, Any] | None:
    # "IPs of the clone are set to DHCP" (spec §15): a static or manual address stays with the source.
    return None if conf is None else {"conf": "dhcp", "ip": None}
