"""Reading a drive's volume back as a raw image (``GET /drives/{uuid}/download/``, spec §24.4).

The volume file is read where it lies: the local host's path, or fetched over the host's SSH
connection (SFTP) as :meth:`Cloud._transfer` does; ``qemu-img convert`` then writes the raw
image (the whole drive, zero padded) to a scratch file that the download streams.  The format is
the volume's recorded one, never probed: a guest could write a qcow2 header into a raw disk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from orchestrator.cloud import Cloud
from orchestrator.db.models import Drive


async def export_raw(cloud: Cloud, drive: Drive, target: Path) -> Path:
    assert drive.host is not None
    listing = await cloud.call(drive.host, "volume.list", pool=drive.pool)
    volume = next(v for v in listing if v["name"] == drive.volume)
    path = volume["path"]
    connection = cloud.connections[drive.host]
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Path(path)
    if not connection.address.is_local:
        source = target.with_suffix(".fetched")
        assert connection.ssh is not None
        async with connection.ssh.start_sftp_client() as sftp:
            await sftp.get(path, str(source))
    try:
        argv = ["qemu-img", "convert", "-q", "-U", "-f", volume["format"], "-O", "raw", str(source), str(target)]
        proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise OSError(f"qemu-img convert failed: {err.decode(errors='replace').strip()}")
    finally:
        if source != Path(path):
            source.unlink(missing_ok=True)
    return target
