"""Reading a drive's volume back as a raw image (``GET /drives/{uuid}/download/``, spec §24.4).

The volume file is read where it lies (the local host's path, or a copy fetched over the host's
SSH connection); ``qemu-img convert`` then writes the raw image (the whole drive, zero padded)
to a scratch file that the download streams.  An RBD image is no file: its host writes the raw
image out (``volume.export``).  The format is the volume's recorded one, never
probed: a guest could write a qcow2 header into a raw disk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from orchestrator.db.models import Drive
from orchestrator.hosts.pool import Hosts
from orchestrator.work.volumes import VolumeWork


async def export_raw(hosts: Hosts, volumes: VolumeWork, drive: Drive, target: Path) -> Path:
    assert drive.host is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    if (await volumes.path_of(drive)).get("kind") == "rbd":
        async with hosts.exported(drive.host, drive.pool, drive.volume, target.parent) as raw:  # type: ignore[arg-type]
            raw.replace(target)
        return target
    async with volumes.readable(drive, target.parent) as (source, fmt, _overlay):  # a clone's bases come along
        argv = ["qemu-img", "convert", "-q", "-U", "-f", fmt, "-O", "raw", str(source), str(target)]
        proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise OSError(f"qemu-img convert failed: {err.decode(errors='replace').strip()}")
    return target
