"""Images in and out (spec §24): ``POST /drives/upload/[<file name>/]`` (one raw request), the chunked
protocols pycloudsigma speaks (``/initupload/``, one-time ``upload_chunk`` links, resumable.js on
``/drives/{uuid}/upload/``) and ``GET /drives/{uuid}/download/`` with ``Range``.

The body streams to a file in the data directory; the drive shows ``uploading`` until the
storage host's agent has imported it (format detected from the content, never the name).  The
request that completes an upload (the raw one, the last chunk) answers once that import ended, so
a client that reads the drive next sees it ``unmounted``, or gone with a ``failed`` job saying why.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from aiohttp import BodyPartReader, MultipartReader, web
from sqlalchemy import select

from orchestrator.api.drives import DRIVE, RELATED
from orchestrator.api.resource import (
    caller,
    get_owned,
    objects_of,
    owned_row,
    path,
    query_uuids,
    read_json,
    respond,
    session,
)
from orchestrator.db.models import Drive, utcnow
from orchestrator.domain.drives import IDLE, active_server, check_size, new_drive, round_size
from orchestrator.domain.errors import DomainError, Kind, forbidden, invalid, notexist
from orchestrator.domain.jobs import finish_started, started
from orchestrator.domain.tagging import set_resource_tags
from orchestrator.domain.uploads import Upload, chunk_span
from orchestrator.web.auth import public
from orchestrator.web.errors import HttpError
from orchestrator.web.keys import AUTH, CAPABILITIES, CONFIG, EXPORTS, SCHEDULER, SESSIONS, UPLOADS, WORK

routes = web.RouteTableDef()


@routes.post(path("drives/upload"))
@routes.post(path("drives/upload/{filename}"))
async def upload(request: web.Request) -> web.Response:
    caps, work, scheduler = request.app[CAPABILITIES], request.app[WORK], request.app[SCHEDULER]
    length = request.content_length
    if not length:
        raise invalid("A raw image body with a Content-Length is required", "Content-Length")
    if length > request.app[CONFIG].max_upload:
        raise invalid(f"Uploads are limited to {request.app[CONFIG].max_upload} bytes", "Content-Length")
    storage_type = caps.default_storage_type
    size = max(round_size(length), caps.drive_size(storage_type)["min"])
    check_size(caps, storage_type, size, "Content-Length")
    filename = request.match_info.get("filename")
    # The file name follows the rules of any drive name (no NUL, no line breaks, at most 1,024 characters).
    name = DRIVE.by_name["name"].parse(filename, "filename") if filename else f"Upload_{utcnow():%Y-%m-%d %H:%M:%S}"
    async with scheduler.placing(request.app[SESSIONS]) as s:
        drive = await new_drive(s, scheduler, caller(request), status="uploading", avoid=query_uuids(request, "avoid"),
                                name=name, size=size, media="disk", storage_type=storage_type, affinities=[],
                                allow_multimount=False, iops=None, meta={})
        uuid = drive.uuid
    target = Path(request.app[UPLOADS].directory, f"{uuid}.img")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        received = await _receive(request, target, length)
        if received != length:
            raise invalid(f"Received {received} of {length} bytes", "Content-Length")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        async with session(request) as s:
            await finish_started(s, "drive_upload", uuid, "The upload ended before the whole image arrived")
            row = await s.get(Drive, uuid)
            if row is not None:
                await s.delete(row)
        raise
    await work.now(work.volumes.import_upload(uuid, target), f"import {uuid}")
    return web.Response(status=201, text=f"{uuid}\n", content_type="text/plain")


async def _receive(request: web.Request, target: Path, limit: int) -> int:
    """Stream the body to ``target``; the bytes counted are the decoded ones (``Content-Encoding: gzip``
    inflates here), and nothing is written beyond ``limit``, the size the drive was made for."""
    received = 0
    with target.open("wb") as out:
        async for chunk in request.content.iter_chunked(1 << 20):
            received += len(chunk)
            if received > limit:
                raise invalid(f"The body decodes to more than the {limit} bytes announced", "Content-Length")
            out.write(chunk)
    return received


# --- chunked uploads (spec §24.2, §24.3) ------------------------------------------------------------


@routes.post(path("initupload"))
async def init_upload(request: web.Request) -> web.Response:
    """A drive of the image's exact size in ``uploading``, and an ``drive_upload`` job showing progress."""
    body = objects_of(await read_json(request))[0]
    values = DRIVE.validate(body, create=True)
    caps, scheduler, owner = request.app[CAPABILITIES], request.app[SCHEDULER], caller(request)
    size, storage_type = values["size"], values["storage_type"] or caps.default_storage_type
    if size > request.app[CONFIG].max_upload:
        raise invalid(f"Uploads are limited to {request.app[CONFIG].max_upload} bytes", "size")
    check_size(caps, storage_type, round_size(size))
    tags = values.pop("tags", [])
    async with scheduler.placing(request.app[SESSIONS]) as s:
        # The exact image size while uploading (clients compare it with the file); rounded once imported.
        drive = await new_drive(s, scheduler, owner, status="uploading", avoid=query_uuids(request, "avoid"),
                                **{**values, "storage_type": storage_type})
        uuid = drive.uuid
        await s.flush()
        await set_resource_tags(s, "drives", uuid, tags, owner)
    await request.app[UPLOADS].start(uuid, owner, size)
    async with session(request) as s:
        created = DRIVE.dump(await get_owned(s, owned_row(Drive, RELATED, owner, uuid), "Drive"))
    return respond({"objects": [created]}, 201, {"Location": created["resource_uri"]})


@routes.post(path("chunks/{token}"))
@public  # the one-time link is the credential (spec §24.2)
async def chunk_by_link(request: web.Request) -> web.Response:
    """``POST <link>``: the body is the chunk (no authentication: the link is the credential)."""
    link = await request.app[UPLOADS].redeem(request.match_info["token"])
    async with session(request) as s:
        drive = await s.get(Drive, link.drive)
    if (drive is None or drive.status != "uploading"  # deleted since the link was made, or its owner disabled
            or drive.owner_uuid is None or not await request.app[AUTH].enabled(drive.owner_uuid)):
        await request.app[UPLOADS].forget(link.drive)
        raise DomainError(Kind.NOT_FOUND, "This upload link is unknown, used or expired")
    await _store(request, link.drive, link.offset, link.length, request.content.iter_chunked(1 << 20))
    return respond({})


async def _own_upload(request: web.Request) -> Upload:
    """The caller's upload in progress on the drive in the URL.  Another user's drive, a deleted one
    and one that never was are all 404 alike; the caller's own drive that takes no upload is 403."""
    uuid, owner, uploads = request.match_info["uuid"], caller(request), request.app[UPLOADS]
    async with session(request) as s:
        drive = await s.scalar(select(Drive).where(Drive.uuid == uuid, Drive.owner_uuid == owner))
    upload = await uploads.find(uuid)
    if drive is None:
        if upload is not None and upload.owner == owner:
            await uploads.forget(uuid)  # the caller's drive was deleted (a server's recurse delete, say)
        raise notexist("Drive")
    if upload is None or upload.owner != owner or drive.status != "uploading":
        raise forbidden(f"Drive {uuid} is not waiting for an upload")
    return upload


@routes.get(path("drives/{uuid}/upload"))
async def resumable_test(request: web.Request) -> web.Response:
    """resumable.js "testChunks": 200 when the chunk is stored, 404 otherwise (never another 2xx)."""
    upload = await _own_upload(request)
    offset, _ = _resumable_span(request.query, upload.size)
    if offset in upload.received:
        return web.Response(text="present\n")
    raise notexist("Chunk")


@routes.post(path("drives/{uuid}/upload"))
async def resumable_post(request: web.Request) -> web.Response:
    upload = await _own_upload(request)
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError):  # not multipart/form-data, or no boundary
        raise invalid("A multipart/form-data body is required", "Content-Type") from None
    fields: dict[str, str] = {}
    while (part := await _next_part(reader)) is not None:
        if not isinstance(part, BodyPartReader):
            raise invalid("Nested multipart bodies are not accepted", "file")
        if part.name != "file":
            try:
                fields[part.name or ""] = (await part.read(decode=True)).decode()
            except (UnicodeDecodeError, ValueError, RuntimeError) as e:
                raise invalid(f"The multipart field {part.name!r} is not UTF-8 text: {e}", part.name) from None
            if len(fields) > 64:
                raise invalid("Too many multipart fields", "file")
            continue
        offset, length = _resumable_span(fields, upload.size)
        data = bytearray()
        while piece := await part.read_chunk(1 << 20):  # part.read() is capped by client_max_size
            data += piece
            if len(data) > 8 * length + 16:  # a chunk, or the bytes literal pycloudsigma sends
                raise invalid(f"The chunk is longer than {length} bytes", "file")
        await _store(request, upload.drive, offset, length, _once(_chunk_bytes(bytes(data), length)))
        return respond({})
    raise invalid("A multipart 'file' part after the resumable fields is required", "file")


async def _next_part(reader: MultipartReader) -> BodyPartReader | MultipartReader | None:
    try:
        return await reader.next()
    except (AssertionError, ValueError, RuntimeError) as e:  # aiohttp asserts on a malformed body
        raise invalid(f"Malformed multipart body: {e}", "file") from None


def _resumable_span(fields: Mapping[str, str], total: int) -> tuple[int, int]:
    try:
        number, chunk_size = int(fields["resumableChunkNumber"]), int(fields["resumableChunkSize"])
    except (KeyError, ValueError):
        raise invalid("resumableChunkNumber and resumableChunkSize are required integers") from None
    return chunk_span(number - 1, chunk_size, total)  # resumable.js counts from 1


def _chunk_bytes(data: bytes, length: int) -> bytes:
    """The chunk's bytes.  pycloudsigma's ``resumable_upload`` sends ``str(bytes)`` on Python 3, i.e. the
    text ``b'...'``: when the part is not the expected length but is such a literal of it, decode it."""
    if len(data) != length and data[:2] in (b"b'", b'b"'):
        with contextlib.suppress(ValueError, SyntaxError, MemoryError):
            decoded = ast.literal_eval(data.decode("ascii"))
            if isinstance(decoded, bytes) and len(decoded) == length:
                return decoded
    return data


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _store(request: web.Request, drive: str, offset: int, length: int, body: AsyncIterator[bytes]) -> None:
    """Write a chunk, show the progress on the drive's upload job; the last chunk imports the image
    and answers once the import ended (the job then ``success`` or ``failed``)."""
    uploads = request.app[UPLOADS]
    upload = await uploads.write(drive, offset, length, body)
    async with session(request) as s:
        for job in await started(s, "drive_upload", drive):
            job.progress = min(99, 100 * upload.done // upload.size)
    if upload.complete and (complete := await uploads.finish(drive)) is not None:
        work = request.app[WORK]
        await work.now(work.volumes.import_upload(drive, complete), f"import {drive}")
        await uploads.settled(drive)


# --- download (spec §24.4) ----------------------------------------------------------------------------


DOWNLOAD_RETRY = 5  # seconds a client over its download cap is told to wait


@routes.get(path("drives/{uuid}/download"))
async def download(request: web.Request) -> web.StreamResponse:
    async with session(request) as s:
        drive = await get_owned(s, owned_row(Drive, RELATED, caller(request), request.match_info["uuid"]), "Drive")
        if drive.status not in IDLE:
            raise forbidden(f'Cannot download drive in status "{drive.status}"')
        busy = await active_server(s, drive.uuid)
        if busy is not None:
            raise forbidden(f"Drive {drive.uuid} is attached to server {busy}, which is not stopped")
    exports, user = request.app[EXPORTS], caller(request)
    if exports.full(user):
        raise HttpError(Kind.THROTTLED, f"At most {exports.per_user} downloads at once; retry when one has ended",
                        {"Retry-After": str(DOWNLOAD_RETRY)})
    async with exports.reading(drive, user) as image:
        # Not aiohttp's FileResponse: it prepares again after the handler returns, and by then this
        # scratch file may be gone.
        return await _send_range(request, image, drive.uuid)


async def _send_range(request: web.Request, file: Path, name: str) -> web.StreamResponse:
    """The file, or the one ``Range`` asked for (206); 416 for a range outside it."""
    size = file.stat().st_size
    try:
        wanted = request.http_range
    except ValueError:
        wanted = slice(None, None)
    start, stop = wanted.start, wanted.stop
    if start is not None and start < 0:  # "bytes=-N": the last N bytes
        start, stop = max(size + start, 0), size
    partial = start is not None or stop is not None
    start, stop = start or 0, min(size, stop if stop is not None else size)
    if partial and start >= size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    response = web.StreamResponse(status=206 if partial else 200, headers={
        "Content-Type": "application/octet-stream", "Content-Disposition": f"attachment; filename={name}",
        "Accept-Ranges": "bytes", "Content-Length": str(stop - start)})
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    await response.prepare(request)
    with file.open("rb") as f:
        f.seek(start)
        left = stop - start
        while left > 0:
            piece = f.read(min(left, 1 << 20))
            if not piece:
                break
            left -= len(piece)
            await response.write(piece)
    await response.write_eof()
    return response
