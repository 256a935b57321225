"""``POST /drives/upload/[<file name>/]``: a raw image upload that creates a drive (spec §24.1).

The body streams to a file in the data directory; the drive shows ``uploading`` until the
storage host's agent has imported it (format detected from the content, never the name).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from aiohttp import web

from orchestrator.api.common import caller, path, query_uuids, session
from orchestrator.db.models import Drive, new_uuid, utcnow
from orchestrator.drives import check_size, round_size
from orchestrator.errors import invalid
from orchestrator.keys import CAPABILITIES, CLOUD, CONFIG, SCHEDULER

routes = web.RouteTableDef()


@routes.post(path("drives/upload"))
@routes.post(path("drives/upload/{filename}"))
async def upload(request: web.Request) -> web.Response:
    caps, cloud, scheduler = request.app[CAPABILITIES], request.app[CLOUD], request.app[SCHEDULER]
    length = request.content_length
    if not length:
        raise invalid("A raw image body with a Content-Length is required", "Content-Length")
    storage_type = caps.default_storage_type
    size = max(round_size(length), caps.drive_size(storage_type)["min"])
    check_size(caps, storage_type, size, "Content-Length")
    name = request.match_info.get("filename") or f"Upload_{utcnow():%Y-%m-%d %H:%M:%S}"
    uuid = new_uuid()
    async with scheduler.lock, session(request) as s:
        drive = Drive(uuid=uuid, owner_uuid=caller(request), name=name, size=size, media="disk",
                      storage_type=storage_type, affinities=[], allow_multimount=False, iops=None, meta={},
                      status="uploading", avoid=query_uuids(request, "avoid"), volume=f"{uuid}.qcow2")
        s.add(drive)
        await scheduler.place_drive(s, drive, drive.avoid)
    target = Path(request.app[CONFIG].data_dir, "uploads", f"{uuid}.img")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        received = await _receive(request, target)
        if received != length:
            raise invalid(f"Received {received} of {length} bytes", "Content-Length")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        async with session(request) as s:
            row = await s.get(Drive, uuid)
            if row is not None:
                await s.delete(row)
        raise
    cloud.spawn(cloud.import_volume(uuid, target))
    return web.Response(status=201, text=f"{uuid}\n", content_type="text/plain")


async def _receive(request: web.Request, target: Path) -> int:
    received = 0
    with target.open("wb") as out:
        async for chunk in request.content.iter_chunked(1 << 20):
            out.write(chunk)
            received += len(chunk)
    return received
