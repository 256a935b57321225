"""Reading a drive's volume back as a raw image (``GET /drives/{uuid}/download/``, spec §24.4).

The volume file is read where it lies (the local host's path, or a copy fetched over the host's
SSH connection); ``qemu-img convert`` then writes the raw image (the whole drive, zero padded,
sparse) to a scratch file that the download streams.  An RBD image is no file: its host writes the
raw image out (``volume.export``).  The format is the volume's recorded one, never probed: a guest
could write a qcow2 header into a raw disk.

One scratch copy per drive serves every download of it that runs at the same time, and goes when
the last of them ends (or its client hangs up).  Before a copy is made its worst case is counted
against the scratch directory's free space, less what copies being made already reserved; each
user has a number of downloads running at once (the API answers 429 beyond it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.db.models import Drive, new_uuid
from orchestrator.domain.errors import DomainError, Kind
from orchestrator.hosts.pool import Hosts
from orchestrator.work.volumes import VolumeWork

SPARE = 256 * 2**20  # bytes of the scratch file system no copy may take (logs, the database)


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
        try:
            _, err = await proc.communicate()
        except asyncio.CancelledError:  # the last reader left: no half-written copy stays behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise OSError(f"qemu-img convert failed: {err.decode(errors='replace').strip()}")
    return target


@dataclass
class _Copy:
    path: Path
    made: asyncio.Task[Path]
    reserved: int        # bytes counted against free space while it is being made
    readers: int = 0


class Exports:
    def __init__(self, hosts: Hosts, volumes: VolumeWork, scratch: Path, per_user: int) -> None:
        self.hosts, self.volumes, self.scratch, self.per_user = hosts, volumes, scratch, per_user
        self.copies: dict[str, _Copy] = {}        # drive uuid → its shared scratch copy
        self.running: Counter[str] = Counter()   # user uuid → downloads under way

    def sweep(self) -> None:
        """At start: copies a previous process left behind."""
        if self.scratch.exists():
            for leftover in self.scratch.glob("download-*"):
                leftover.unlink(missing_ok=True)

    def full(self, user: str) -> bool:
        return self.running[user] >= self.per_user

    def _needed(self, drive: Drive, path: str) -> int:
        """The most the copy can take: the raw image's data is at most the source's allocated bytes
        (or the drive's size, for a host whose file cannot be looked at here); a remote host's file
        is fetched first, so twice that."""
        if self.hosts.connections[drive.host or ""].address.is_local:
            try:
                return os.stat(path).st_blocks * 512
            except OSError:
                return drive.size
        return 2 * drive.size

    def _check_space(self, needed: int) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        reserved = sum(c.reserved for c in self.copies.values() if not c.made.done())
        free = shutil.disk_usage(self.scratch).free - reserved - SPARE
        if needed > free:
            raise DomainError(Kind.NO_CAPACITY, f"Not enough scratch space for this download now "
                              f"({needed} bytes needed, {max(free, 0)} free); retry later")

    @contextlib.asynccontextmanager
    async def reading(self, drive: Drive, user: str) -> AsyncIterator[Path]:
        """The drive's raw image for as long as the block runs, shared with concurrent readers."""
        self.running[user] += 1
        try:
            copy = self.copies.get(drive.uuid)
            if copy is None:
                copy = await self._start(drive)
            copy.readers += 1
            try:
                yield await asyncio.shield(copy.made)
            finally:
                copy.readers -= 1
                if copy.readers == 0:
                    await self._drop(drive.uuid, copy)
        finally:
            self.running[user] -= 1
            if not self.running[user]:
                del self.running[user]

    async def _start(self, drive: Drive) -> _Copy:
        volume = await self.volumes.path_of(drive)
        existing = self.copies.get(drive.uuid)  # another reader started it meanwhile
        if existing is not None:
            return existing
        needed = self._needed(drive, volume["path"])
        self._check_space(needed)
        path = self.scratch / f"download-{drive.uuid}-{new_uuid()}.raw"
        copy = _Copy(path, asyncio.create_task(export_raw(self.hosts, self.volumes, drive, path)), needed)
        self.copies[drive.uuid] = copy
        return copy

    async def _drop(self, drive_uuid: str, copy: _Copy) -> None:
        if self.copies.get(drive_uuid) is copy:
            del self.copies[drive_uuid]
        if not copy.made.done():
            copy.made.cancel()
        try:
            await asyncio.wait([copy.made])  # its outcome was the readers' business
        finally:
            copy.path.unlink(missing_ok=True)
