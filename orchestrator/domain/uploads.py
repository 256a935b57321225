"""Chunked uploads in progress (spec §24.2, §24.3): which byte ranges of each drive arrived.

A drive made by ``/initupload/`` gets a sparse file of its exact size in the data directory;
chunks (``upload_chunk`` one-time links or resumable.js POSTs) are written at their offsets.
When every byte has arrived the file goes to the storage host like a raw upload (format told
from the content by the agent).  State lives in the API node's memory: a deleted drive's upload
ends with it (its links and chunk file go), and at start :func:`recover` sweeps what a previous
process left: every file in the directory goes, and each drive still ``uploading`` waits for
its chunks again from none (clients re-send them, or delete the drive).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Drive, Job, JobLink
from orchestrator.domain.errors import DomainError, Kind, forbidden, invalid
from orchestrator.domain.uris import API_ROOT

LINK_TTL = 300.0  # seconds a one-time chunk link stays valid


def chunk_span(number: int, chunk_size: int, total: int) -> tuple[int, int]:
    """(offset, length) of 0-based chunk ``number``: the last chunk also carries the remainder."""
    if chunk_size <= 0:
        raise invalid("chunk_size must be positive", "chunk_size")
    count = max(total // chunk_size, 1)
    if not 0 <= number < count:
        raise invalid(f"chunk_number must be between 0 and {count - 1}", "chunk_number")
    offset = number * chunk_size
    return offset, (total - offset if number == count - 1 else chunk_size)


@dataclass
class Upload:
    drive: str
    owner: str
    size: int
    path: Path
    received: dict[int, int] = field(default_factory=dict)  # offset → length
    finished: bool = False  # every byte arrived; the import runs (chunks asked for again: 416)

    @property
    def done(self) -> int:
        return sum(self.received.values())

    @property
    def complete(self) -> bool:
        return self.done >= self.size


@dataclass
class Link:
    drive: str
    offset: int
    length: int


class Uploads:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.active: dict[str, Upload] = {}
        self.links: TTLCache[str, Link] = TTLCache(maxsize=100_000, ttl=LINK_TTL)  # one-time, token → chunk

    def start(self, drive: str, owner: str, size: int) -> Upload:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{drive}.chunks"
        with path.open("wb") as f:
            f.truncate(size)
        self.active[drive] = upload = Upload(drive, owner, size, path)
        return upload

    def forget(self, drive: str) -> None:
        """The drive is gone: its upload, its unused links and its chunk file go with it."""
        upload = self.active.pop(drive, None)
        for token in [t for t, link in list(self.links.items()) if link.drive == drive]:
            self.links.pop(token, None)
        if upload is not None:
            upload.path.unlink(missing_ok=True)

    def get(self, drive: str) -> Upload:
        upload = self.active.get(drive)
        if upload is None:
            raise forbidden(f"Drive {drive} is not waiting for an upload")
        return upload

    def link(self, drive: str, number: int, chunk_size: int) -> str:
        upload = self.get(drive)
        offset, length = chunk_span(number, chunk_size, upload.size)
        if offset in upload.received:
            raise DomainError(Kind.ALREADY_DONE, f"Chunk {number} is already uploaded", "chunk_number")
        token = secrets.token_urlsafe(24)
        self.links[token] = Link(drive, offset, length)
        return f"{API_ROOT}/chunks/{token}/"

    def redeem(self, token: str) -> Link:
        link = self.links.pop(token, None)
        if link is None:
            raise DomainError(Kind.NOT_FOUND, "This upload link is unknown, used or expired")
        return link

    async def write(self, drive: str, offset: int, length: int, body: AsyncIterator[bytes]) -> Upload:
        """Write one chunk (exactly ``length`` bytes) at ``offset``."""
        upload = self.get(drive)
        written = 0
        with upload.path.open("r+b") as f:
            f.seek(offset)
            async for piece in body:
                written += len(piece)
                if written > length:
                    raise invalid(f"The chunk is longer than {length} bytes", "file")
                f.write(piece)
        if written != length:
            raise invalid(f"The chunk has {written} bytes, {length} expected", "file")
        upload.received[offset] = length
        return upload

    def finish(self, drive: str) -> Path | None:
        """The complete file, once: the caller imports it."""
        upload = self.active[drive]
        if upload.finished:
            return None
        upload.finished = True
        return upload.path


async def recover(s: AsyncSession, uploads: Uploads) -> int:
    """At start: no upload of a previous process can go on (its state was in memory, its imports
    were tasks), so every file it left goes, and each drive still ``uploading`` waits for its
    bytes again from none: chunks (``upload_chunk`` links, resumable.js) are taken as after
    ``/initupload/``, or the client deletes the drive.  Returns how many drives wait again."""
    if uploads.directory.exists():
        for leftover in uploads.directory.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
    drives = (await s.scalars(select(Drive).where(Drive.status == "uploading", Drive.owner_uuid.is_not(None)))).all()
    for drive in drives:
        job = await s.scalar(select(Job).join(JobLink, JobLink.job_uuid == Job.uuid).where(
            JobLink.res_uuid == drive.uuid, Job.operation == "drive_upload", Job.state == "started"))
        if job is not None:
            job.progress = 0
        uploads.start(drive.uuid, drive.owner_uuid, drive.size)
    return len(drives)
