"""Chunked uploads in progress (spec §24.2, §24.3): which byte ranges of each drive arrived.

A drive made by ``/initupload/`` gets a sparse file of its exact size in the upload directory,
which every API node shares; chunks (``upload_chunk`` one-time links or resumable.js POSTs) are
written at their offsets through any node.  Which ranges arrived, the one-time links and which
node imports the complete file are rows in the database (``uploads``, ``upload_pieces``,
``one_time_tokens``), so an upload begun through one node is finished through another.  When every
byte has arrived, the node that stored the last chunk claims the import (one node wins) and sends
the file to the storage host like a raw upload (format told from the content by the agent).  A
deleted drive's upload ends with it (its links and chunk file go).  :func:`recover` is what a node
does for uploads that a node which died (or this process before a restart) left: an import under
way is done again from the complete file; a raw upload's drive waits for its chunks from none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from orchestrator.db.models import Drive, Job, JobLease, JobLink, UploadPiece, UploadState
from orchestrator.domain import tokens
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
    """One upload as the database shows it now."""

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
    def __init__(self, directory: Path, sessions: async_sessionmaker, node: str) -> None:
        self.directory = directory
        self.sessions = sessions
        self.node = node  # this API node, as its lease names it

    def file(self, drive: str) -> Path:
        return self.directory / f"{drive}.chunks"

    async def start(self, drive: str, owner: str, size: int) -> Upload:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.file(drive)
        with path.open("wb") as f:
            f.truncate(size)
        async with self.sessions.begin() as s:
            await start_in(s, drive, owner, size)
        return Upload(drive, owner, size, path)

    async def forget(self, drive: str) -> None:
        """The drive is gone: its upload, its unused links and its chunk file go with it."""
        async with self.sessions.begin() as s:
            await s.execute(delete(UploadPiece).where(UploadPiece.drive_uuid == drive))
            await s.execute(delete(UploadState).where(UploadState.drive_uuid == drive))
            await tokens.revoke(s, "chunk", drive)
        self.file(drive).unlink(missing_ok=True)

    async def settled(self, drive: str) -> None:
        """The import ended: a drive it failed for is gone, and so goes its upload; an imported
        drive's stays (asked for a chunk again: 416) until the drive is deleted."""
        async with self.sessions() as s:
            gone = await s.get(Drive, drive) is None
        if gone:
            await self.forget(drive)

    async def find(self, drive: str) -> Upload | None:
        async with self.sessions() as s:
            state = await s.get(UploadState, drive)
            if state is None:
                return None
            pieces = (await s.execute(select(UploadPiece.offset, UploadPiece.length)
                                      .where(UploadPiece.drive_uuid == drive))).all()
        return Upload(drive, state.owner_uuid, state.size, self.file(drive), dict(pieces), state.finished)

    async def get(self, drive: str) -> Upload:
        upload = await self.find(drive)
        if upload is None:
            raise forbidden(f"Drive {drive} is not waiting for an upload")
        return upload

    async def link(self, drive: str, number: int, chunk_size: int) -> str:
        upload = await self.get(drive)
        offset, length = chunk_span(number, chunk_size, upload.size)
        if offset in upload.received:
            raise DomainError(Kind.ALREADY_DONE, f"Chunk {number} is already uploaded", "chunk_number")
        async with self.sessions.begin() as s:
            token = await tokens.issue(s, "chunk", drive, LINK_TTL, {"offset": offset, "length": length})
        return f"{API_ROOT}/chunks/{token}/"

    async def redeem(self, token: str) -> Link:
        async with self.sessions.begin() as s:
            row = await tokens.redeem(s, "chunk", token)
        if row is None:
            raise DomainError(Kind.NOT_FOUND, "This upload link is unknown, used or expired")
        return Link(row.subject, int(row.data["offset"]), int(row.data["length"]))

    async def write(self, drive: str, offset: int, length: int, body: AsyncIterator[bytes]) -> Upload:
        """Write one chunk (exactly ``length`` bytes) at ``offset``."""
        upload = await self.get(drive)
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
        async with self.sessions.begin() as s:
            if await s.get(UploadState, drive) is None:  # deleted meanwhile
                raise forbidden(f"Drive {drive} is not waiting for an upload")
            await s.merge(UploadPiece(drive_uuid=drive, offset=offset, length=length))
        return await self.get(drive)

    async def finish(self, drive: str) -> Path | None:
        """The complete file, once across all nodes: the caller imports it."""
        async with self.sessions.begin() as s:
            claimed = (await s.execute(update(UploadState).where(
                UploadState.drive_uuid == drive, UploadState.finished.is_(False))
                .values(finished=True, importing_node=self.node))).rowcount
        return self.file(drive) if claimed == 1 else None


async def start_in(s: AsyncSession, drive: str, owner: str, size: int) -> None:
    await s.execute(delete(UploadPiece).where(UploadPiece.drive_uuid == drive))
    await s.execute(delete(UploadState).where(UploadState.drive_uuid == drive))
    s.add(UploadState(drive_uuid=drive, owner_uuid=owner, size=size))


async def recover(s: AsyncSession, uploads: Uploads, alive: Collection[str], *, sweep: bool = False) -> list[str]:
    """What uploads of nodes not in ``alive`` left: returns the drives whose import this node
    now owns and must run again (their complete file waits in the upload directory).

    * an import under way on a dead node is claimed (one node wins) to be run again;
    * a drive still ``uploading`` with no chunked upload (a raw upload whose request died with its
      node) waits for its bytes again from none: chunks are taken as after ``/initupload/``, or
      the client deletes the drive;
    * the upload of a drive that is gone goes;
    * with ``sweep`` (at start), files in the directory of drives no longer uploading go."""
    uploading = (await s.scalars(select(Drive).where(Drive.status == "uploading",
                                                     Drive.owner_uuid.is_not(None)))).all()
    if sweep and uploads.directory.exists():
        keep = {f"{d.uuid}.chunks" for d in uploading} | {f"{d.uuid}.img" for d in uploading}
        for leftover in uploads.directory.iterdir():
            if leftover.is_file() and leftover.name not in keep:
                leftover.unlink(missing_ok=True)
    # Uploads of drives deleted without their upload (a node died first, a server's recursive delete).
    stale = (await s.scalars(select(UploadState.drive_uuid).where(
        UploadState.drive_uuid.not_in(select(Drive.uuid))))).all()
    if stale:
        await s.execute(delete(UploadPiece).where(UploadPiece.drive_uuid.in_(stale)))
        await s.execute(delete(UploadState).where(UploadState.drive_uuid.in_(stale)))
    states = {u.drive_uuid: u for u in (await s.scalars(select(UploadState).where(
        UploadState.drive_uuid.in_([d.uuid for d in uploading])))).all()}
    reimport = []
    for drive in uploading:
        state = states.get(drive.uuid)
        if state is not None:
            if state.finished and state.importing_node not in alive:
                claimed = (await s.execute(update(UploadState).where(
                    UploadState.drive_uuid == drive.uuid, UploadState.importing_node == state.importing_node)
                    .values(importing_node=uploads.node))).rowcount
                if claimed == 1:
                    reimport.append(drive.uuid)
            continue
        job = await s.scalar(select(Job).join(JobLink, JobLink.job_uuid == Job.uuid).where(
            JobLink.res_uuid == drive.uuid, Job.operation == "drive_upload", Job.state == "started"))
        runner = None if job is None else await s.scalar(select(JobLease.node).where(JobLease.job_uuid == job.uuid))
        if runner in alive:
            continue  # a raw upload a live node receives now
        if job is not None:
            job.progress = 0
        uploads.directory.mkdir(parents=True, exist_ok=True)
        uploads.file(drive.uuid).unlink(missing_ok=True)
        with uploads.file(drive.uuid).open("wb") as f:
            f.truncate(drive.size)
        await start_in(s, drive.uuid, drive.owner_uuid, drive.size)
    return reimport
