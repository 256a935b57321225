"""/drives/: the drive field table and its handlers (spec §18–§20)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.api import libdrives
from orchestrator.api.fields import NAME, NOT_PROVIDED, Bool, Field, Int, Output, Resource, Str, StrList
from orchestrator.api.resource import (
    AfterCommit,
    action_route,
    caller,
    collection_views,
    created,
    delete_views,
    for_each,
    get_owned,
    objects_of,
    owned_row,
    owned_rows,
    path,
    query_uuids,
    read_json,
    reading,
    respond,
    session,
    validated,
)
from orchestrator.api.rows import Rows
from orchestrator.api.standard import (
    acl_fields,
    jobs_field,
    licenses_field,
    meta_field,
    owner_field,
    resource_uri_field,
    tags_field,
    uuid_field,
)
from orchestrator.db.models import Drive
from orchestrator.domain.cloning import CLONE_KEYS, plan_drive_clone
from orchestrator.domain.drives import check_size, delete_drives, new_drive, round_size, write_drive
from orchestrator.domain.errors import DomainError, invalid, notexist
from orchestrator.domain.tagging import TagLookup, set_resource_tags
from orchestrator.domain.uris import link
from orchestrator.web.auth import CallerDisabled, confirms_caller
from orchestrator.web.keys import CAPABILITIES, SCHEDULER, SESSIONS, UPLOADS, WORK


def _mounted_on(drive: Drive) -> list[dict[str, str]]:
    return [link("servers", uuid) for uuid in dict.fromkeys(a.server_uuid for a in drive.attachments)]


def _runtime(drive: Drive) -> dict[str, Any]:
    return {"is_downloadable": True, "is_ephemeral": False,
            "is_snapshotable": None if drive.status == "creating" else False,
            "snapshots_allocated_size": 0, "storage_type": drive.storage_type}


def _always(value: Any) -> Any:
    return lambda drive: value


DRIVE = Resource("drives", list_methods=("get", "put", "delete", "post"), default_order=(Drive.created, Drive.uuid),
                 fields=(
    uuid_field(Drive, "UUID of the drive"),
    resource_uri_field("drives"),
    owner_field("Owner of the drive", required=False),
    Field("name", NAME, required=True, lookups=("exact", "contains"), column=Drive.name,
          orderable=True, help="Human readable name of the drive"),
    Field("size", Int(minimum=1), required=True, help="Size of the drive in bytes"),
    Field("media", Str(), required=True, choices=("cdrom", "disk"), lookups=("exact",), column=Drive.media,
          help="Media representation type"),
    Field("storage_type", Str(), nullable=True, default=None, choices=("dssd", "zadara"), lookups=("exact",),
          column=Drive.storage_type, help="Underlying storage"),
    Field("affinities", StrList(choices=("ssd",)), default=list, choices=None,
          help="A list of affinities this drive should belong to", schema={"choices": ["ssd"]}),
    Field("allow_multimount", Bool(), default=False, help="Allow the drive to be mounted on multiple servers"),
    Field("iops", Int(minimum=1), nullable=True, default=None, help="IOPS limit per drive"),
    meta_field("User defined meta information"),
    tags_field(Drive),
    Field("status", Str(), readonly=True, short=True, lookups=("exact",), column=Drive.status,
          help="Status of the drive.", schema={"required": True}),
    Field("mounted_on", Output(), readonly=True, get=_mounted_on,
          help="Servers on which this drive is mounted on"),
    jobs_field(),
    licenses_field(lambda d: d.licenses),
    Field("snapshots", Output(), readonly=True, get=_always([]), help="Snapshots of the drive"),
    Field("remote_snapshots", Output(), readonly=True, get=_always([]), help="Drive's Remote snapshots"),
    Field("backup_scheduler", Output(), readonly=True, get=_always(None), help="Drive's Backup scheduler"),
    Field("runtime", Output(), readonly=True, get=_runtime, help="Runtime information of the drive"),
    *acl_fields(),
))
assert DRIVE.by_name["snapshots"].schema.get("default", NOT_PROVIDED) == NOT_PROVIDED

# A library drive seen through /drives/: never mounted, no jobs or tags of anyone (spec §23).
LIBRARY_AS_DRIVE: dict[str, Any] = {"mounted_on": [], "jobs": [], "tags": [], "status": "unmounted"}

routes = web.RouteTableDef()
RELATED = (Drive.attachments, Drive.tag_links, Drive.job_links)  # what a rendering reads
# Read with Core for output; the columns no field reads are not fetched.
READER = Rows(Drive, RELATED, omit=("created", "avoid", "host", "pool", "volume"), verbatim=DRIVE.plain)


def owned(request: web.Request) -> Select[Any]:
    return owned_rows(Drive, RELATED, caller(request))


def one(request: web.Request) -> Select[Any]:
    return owned_row(Drive, RELATED, caller(request), request.match_info["uuid"])


collection_views(routes, DRIVE, owned, reader=READER)


@routes.post(path("drives"))
async def create(request: web.Request) -> web.Response:
    objects, owner, caps = objects_of(await read_json(request)), caller(request), request.app[CAPABILITIES]
    avoid, scheduler, work = query_uuids(request, "avoid"), request.app[SCHEDULER], request.app[WORK]
    checked = validated(objects, lambda body: DRIVE.validate(body, create=True))
    async with scheduler.placing(request.app[SESSIONS]) as s:
        # Looked up once for every object: the tags they name, where drives go (a bad object fails below).
        tags = await TagLookup.load(s, [t for v in checked if isinstance(v, dict) for t in v.get("tags", [])], owner)
        placer = await scheduler.drive_placer(s, avoid, owner)

        async def make(values: dict[str, Any] | DomainError) -> Drive:
            if isinstance(values, DomainError):
                raise values
            storage_type = values["storage_type"] or caps.default_storage_type
            if storage_type not in caps.storage_types:
                raise invalid(f"storage_type {storage_type!r} is not offered", "storage_type")
            check_size(caps, storage_type, values["size"])
            columns = {k: v for k, v in values.items() if k != "tags"}
            drive = await new_drive(s, scheduler, owner, status="creating", avoid=avoid, placer=placer, **{
                **columns, "storage_type": storage_type, "size": round_size(values["size"])})
            await set_resource_tags(s, "drives", drive.uuid, values.get("tags", []), owner, new=True, known=tags)
            return drive

        uuids = [drive.uuid for drive in await for_each(checked, make)]
        await s.flush()  # every object's rows in one flush: a multi-row INSERT per table
    for uuid in uuids:  # the host agents create the volumes; each drive then leaves "creating"
        await work.later(work.volumes.create(uuid), f"create volume {uuid}")
    return await created(request, DRIVE, owned(request), Drive, uuids, READER)


@routes.get(path("drives/{uuid}"))
@confirms_caller
async def get(request: web.Request) -> web.Response:
    """The caller's drive, or a library drive in drive shape with ``owner: null`` (spec §20.2)."""
    fields = request.query.get("fields")
    only = {f.strip() for f in fields.split(",")} if fields else None
    enabled, drive = await READER.owned(reading(request), caller(request), request.match_info["uuid"])
    if not enabled:
        raise CallerDisabled()  # the auth middleware answers as for a wrong credential
    if drive is not None:
        return respond(DRIVE.dump(drive, only=only))
    library = await READER.one(reading(request), [Drive.owner_uuid.is_(None), Drive.uuid == request.match_info["uuid"]])
    if library is None:
        raise notexist("Drive")
    return respond({**DRIVE.dump(library, only=only), **LIBRARY_AS_DRIVE})


@routes.put(path("drives/{uuid}"))
async def edit(request: web.Request) -> web.Response:
    return await _edit(request, strict=False, status=200)


async def resize(request: web.Request) -> web.Response:
    return await _edit(request, strict=True, status=202)


async def _edit(request: web.Request, *, strict: bool, status: int) -> web.Response:
    """PUT ignores what a drive in use cannot change; the resize action refuses it (spec §20.5, §20.6)."""
    values = DRIVE.validate(await read_json(request, empty={} if strict else None), create=False)
    async with session(request) as s:
        drive = await get_owned(s, one(request), "Drive")
        resized = await write_drive(s, drive, values, request.app[CAPABILITIES], caller(request), strict=strict)
    if resized:
        work = request.app[WORK]
        await work.later(work.volumes.resize(drive.uuid), f"resize {drive.uuid}")
    async with session(request) as s:
        body = DRIVE.dump(await get_owned(s, one(request), "Drive"))
    return respond({"objects": [body]} if strict else body, status)


async def clone(request: web.Request) -> web.Response:
    """Clone one of the caller's drives or a library drive into the caller's account (spec §20.7)."""
    values = DRIVE.validate(await read_json(request, empty={}), create=False)
    avoid, scheduler = query_uuids(request, "avoid"), request.app[SCHEDULER]
    async with scheduler.placing(request.app[SESSIONS]) as s:
        source = (await s.scalars(one(request))).unique().first()
        entry = None if source is not None else await libdrives.find(s, request.match_info["uuid"])
        if entry is not None:
            source = entry.drive
        if source is None:
            raise notexist("Drive")
        copy, job = await plan_drive_clone(s, source, {k: values[k] for k in CLONE_KEYS if k in values},
                                           request.app[CAPABILITIES], scheduler, avoid, owner=caller(request),
                                           library=entry and libdrives.library_meta(entry))
    await request.app[WORK].clones.run(job.uuid)
    async with session(request) as s:
        return respond({"objects": [DRIVE.dump(await get_owned(s, owned(request).where(Drive.uuid == copy.uuid),
                                                                "Drive"))]}, 202)


async def upload_chunk(request: web.Request) -> web.Response:
    """A one-time link for one chunk of an ``/initupload/`` drive; 416 when it arrived already (spec §24.2)."""
    body = await read_json(request, empty={})
    number, size = (CHUNK_FIELD.parse(body.get(k) if isinstance(body, dict) else None, k)
                    for k in ("chunk_number", "chunk_size"))
    async with session(request) as s:
        drive = await get_owned(s, one(request), "Drive")
    return respond({"link": await request.app[UPLOADS].link(drive.uuid, number, size)})


CHUNK_FIELD = Field("chunk", Int(minimum=0), required=True)
ACTIONS = {"clone": clone, "resize": resize, "upload_chunk": upload_chunk}


async def clone_library_drive(request: web.Request) -> web.Response:
    """``/libdrives/{uuid}/action/?do=clone``: the same clone as through ``/drives/`` (spec §23)."""
    async with session(request) as s:
        if await libdrives.find(s, request.match_info["uuid"]) is None:
            raise notexist("Library drive")
    return await clone(request)


action_route(routes, "libdrives/{uuid}/action", {"clone": clone_library_drive})
action_route(routes, "drives/{uuid}/action", ACTIONS)


async def _delete(request: web.Request, s: AsyncSession, drives: list[Drive]) -> AfterCommit:
    volumes = await delete_drives(s, drives)
    work, uploads, ids = request.app[WORK], request.app[UPLOADS], [d.uuid for d in drives]

    async def after() -> None:
        for uuid in ids:  # an upload in progress ends with its drive: links, chunk file
            await uploads.forget(uuid)
        await work.later(work.volumes.delete(volumes), "delete volumes")

    return after


delete_views(routes, "drives", Drive, "Drive", owned, _delete)
