"""``strato libdrives import``: an operator adds an image to the drive library (spec §23).

The image becomes an ownerless drive's volume on a storage host (imported by that host's
agent, reached over its own short-lived connection, so this works whether or not ``strato
serve`` runs) plus its catalogue row.  Importing the same file under the same name again is a
no-op that prints the existing uuid.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from orchestrator.config import Config
from orchestrator.db.engine import make_engine, make_sessionmaker, migrate
from orchestrator.db.models import Drive, Host, LibDrive, new_uuid
from orchestrator.domain.capabilities import Capabilities
from orchestrator.domain.drives import round_size
from orchestrator.domain.images import file_format
from orchestrator.hosts.connection import AgentConnection, HostAddress, Listener
from orchestrator.hosts.registry import ensure_local_host


@dataclass
class Entry:
    """What the operator says about an image (the catalogue attributes of spec §23)."""

    name: str
    os: str
    arch: str
    media: str
    description: str = ""
    distribution: str | None = None
    version: str | None = None
    category: list[str] = field(default_factory=lambda: ["general"])
    url: str = ""
    install_notes: str = ""
    image_type: str | None = None  # default: preinst for disks, install for cdroms
    paid: bool = False
    favourite: bool = False


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Quiet(Listener):
    """This connection only imports one volume: host events are the running API node's business."""


async def import_image(config: Config, image: Path, entry: Entry, host_name: str | None = None,
                       storage_type: str | None = None) -> tuple[str, bool]:
    """(uuid, created): the library drive holding ``image``; an existing identical one is reused."""
    image_format = file_format(image)  # from the content, never the name
    if entry.media == "disk" and image_format == "iso":
        raise ValueError(f"{image} is an ISO 9660 image: import it with --media cdrom")
    checksum = await asyncio.to_thread(sha256, image)
    engine = make_engine(config.db_url)
    try:
        await migrate(engine)
        sessions = make_sessionmaker(engine)
        async with sessions.begin() as s:
            existing = await s.scalar(select(LibDrive.uuid).join(LibDrive.drive).where(
                LibDrive.checksum == checksum, Drive.name == entry.name))
            if existing is not None:
                return existing, False
            await ensure_local_host(s, config)
        return await _import(config, sessions, image, entry, checksum, host_name, storage_type), True
    finally:
        await engine.dispose()


async def _import(config: Config, sessions: async_sessionmaker, image: Path, entry: Entry, checksum: str,
                  host_name: str | None, storage_type: str | None = None) -> str:
    caps = Capabilities.from_config(config.capabilities)
    storage_type = storage_type or caps.default_storage_type
    if storage_type not in caps.storage_types:
        raise ValueError(f"storage type {storage_type!r} is not offered ({', '.join(caps.storage_types)})")
    async with sessions() as s:
        query = select(Host).order_by(Host.name)
        host = await s.scalar(query.where(Host.name == host_name) if host_name else query)
    if host is None:
        raise ValueError(f"no host {host_name}" if host_name else "no host registered")
    connection = AgentConnection(HostAddress(host.name, host.address, tuple(host.agent_command), host.key_file,
                                             host.known_hosts), _Quiet(), heartbeat=config.heartbeat)
    connection.start()
    try:
        facts = await connection.call("host.facts", timeout=60)
        pool = config.storage_pools.get(storage_type) or facts["pools"][0]["name"]
        uuid = new_uuid()
        remote = image.resolve()
        if not connection.address.is_local:  # the host reads the file from its own /tmp
            assert connection.ssh is not None
            remote = Path("/tmp") / f"strato-libdrive-{uuid}.img"
            async with connection.ssh.start_sftp_client() as sftp:
                await sftp.put(str(image), str(remote))
        try:
            volume = await connection.call("volume.import", timeout=3600, pool=pool, name=f"{uuid}.qcow2",
                                           source_path=str(remote))
        finally:
            if remote != image.resolve() and connection.ssh is not None:
                async with connection.ssh.start_sftp_client() as sftp:
                    await sftp.remove(str(remote))
    finally:
        await connection.stop()
    values: dict[str, Any] = {k: v for k, v in vars(entry).items() if k not in ("name", "media")}
    values["image_type"] = entry.image_type or ("install" if entry.media == "cdrom" else "preinst")
    async with sessions.begin() as s:
        s.add(Drive(uuid=uuid, owner_uuid=None, name=entry.name, size=round_size(volume["capacity"]),
                    media=entry.media, storage_type=storage_type,
                    affinities=[], allow_multimount=False, iops=None, meta={}, status="unmounted", avoid=[],
                    host=host.name, pool=volume["pool"], volume=volume["name"]))
        await s.flush()
        s.add(LibDrive(uuid=uuid, checksum=checksum, **values))
    return uuid
