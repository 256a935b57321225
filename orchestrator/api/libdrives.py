"""/libdrives/: the library of drive images every user can clone (spec §23).

A library drive is an ownerless :class:`Drive` (its volume on a storage host) plus a
:class:`LibDrive` row of catalogue attributes.  Operators fill it with
``strato libdrives import``; through the API it is read-only, except for cloning.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import Select, String, cast, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import contains_eager

from orchestrator.api.fields import NOT_PROVIDED, Bool, Field, Output, Resource, Str, StrList
from orchestrator.api.resource import collection_views, get_owned, path, respond, session
from orchestrator.api.standard import IDENTITY_SCHEMA, licenses_field
from orchestrator.db.models import Drive, LibDrive
from orchestrator.domain.uris import uri

# The attributes a clone inherits in its meta (spec §20.7), as strings (meta is str → str).
LIBRARY_META = ("os", "arch", "distribution", "version", "description", "install_notes", "url", "image_type",
                "category", "paid", "favourite")


def _drive(name: str) -> Any:
    return lambda row: getattr(row.drive, name)


def _always(value: Any) -> Any:
    return lambda row: value


def _attr(name: str, kind: Any, help: str, *, required: bool = False, nullable: bool = True,
          lookups: tuple[str, ...] = (), filters: dict[str, Any] | None = None) -> Field:
    """A catalogue attribute: read-only here (operators set it), schema as the dump shows it."""
    column = getattr(LibDrive, name)
    return Field(name, kind, readonly=True, nullable=nullable, help=help, lookups=lookups,
                 column=column if lookups else None, filters=filters or {},
                 schema={"readonly": False, "required": required, "default": [] if name == "category" else None})


LIBDRIVE = Resource("libdrives", list_methods=("get",), detail_methods=("get",),
                    default_order=(Drive.name, Drive.uuid), fields=(
    Field("uuid", Str(), readonly=True, short=True, lookups=("exact",), column=Drive.uuid, orderable=True,
          get=_drive("uuid"), help="UUID of the drive", schema=IDENTITY_SCHEMA),
    Field("resource_uri", Str(), readonly=True, short=True, get=lambda row: uri("libdrives", row.uuid),
          help='Unicode string data. Ex: "Hello World"', schema={"required": True}),
    Field("owner", Output(), readonly=True, short=True, get=_always(None), help="Owner of the drive",
          schema={"required": False, "default": None}),
    Field("name", Str(), readonly=True, short=True, lookups=("exact", "contains"), column=Drive.name,
          orderable=True, get=_drive("name"), help="Human readable name of the drive",
          schema={"readonly": False, "required": True, "default": None}),
    Field("size", Output("integer"), readonly=True, get=_drive("size"), help="Size of the drive in bytes",
          schema={"readonly": False, "required": True, "default": None}),
    Field("media", Str(), readonly=True, choices=("cdrom", "disk"), lookups=("exact",), column=Drive.media,
          get=_drive("media"), help="Media representation type",
          schema={"readonly": False, "required": True, "default": None}),
    Field("storage_type", Output("string"), readonly=True, get=_always(None), help="Underlying storage",
          schema={"readonly": False, "required": True}),
    Field("affinities", Output("list"), readonly=True, get=_always([]), choices=("ssd",),
          help="A list of affinities this drive should belong to",
          schema={"readonly": False, "required": False, "default": []}),
    Field("allow_multimount", Output("boolean"), readonly=True, get=_always(False),
          help="Allow the drive to be mounted on multiple guests. Not taken into account when drive is cdrom.",
          schema={"readonly": False, "required": False, "default": False}),
    Field("meta", Output("dict"), readonly=True, get=_always({}), help="User defined meta information",
          schema={"readonly": False, "required": False, "default": {}}),
    Field("tags", Output(), readonly=True, get=_always([]),
          help="Many related resources. Can be either a list of URIs or list of individually nested resource data.",
          schema={"readonly": False, "required": False, "default": NOT_PROVIDED}),
    Field("status", Str(), readonly=True, short=True, get=_always("unmounted"), help="Status of the drive.",
          schema={"required": True, "default": NOT_PROVIDED}),
    Field("mounted_on", Output(), readonly=True, get=_always([]), help="Servers on which this drive is mounted on",
          schema={"required": False, "default": NOT_PROVIDED}),
    Field("jobs", Output(), readonly=True, get=_always([]), help="Background jobs related to this resource",
          schema={"required": True, "default": NOT_PROVIDED}),
    licenses_field(lambda row: row.drive.licenses),
    _attr("arch", Str(), "Operating system bit architecture the drive.", required=True, lookups=("exact",)),
    _attr("category", StrList(), "Category of the drive.", filters={"category": lambda values: or_(
        *(cast(LibDrive.category, String).contains(f'"{v}"', autoescape=True) for v in values))}),
    _attr("description", Str(), "Description of drive image."),
    _attr("distribution", Str(), "OS distribution of the drive.", lookups=("exact",)),
    _attr("favourite", Bool(), "Favourite drive image for user.", required=True),
    _attr("image_type", Str(), "Type of drive image.", required=True, lookups=("exact",)),
    _attr("install_notes", Str(), "Install notes for the drive image."),
    _attr("os", Str(), "Operating system of the drive.", required=True, lookups=("exact",)),
    _attr("paid", Bool(), "Paid or free.", required=True),
    _attr("url", Str(), "Vendor URL of the drive image."),
    _attr("version", Str(), "OS version of the drive.", lookups=("exact",)),
))

routes = web.RouteTableDef()


def catalogue() -> Select[Any]:
    return select(LibDrive).join(LibDrive.drive).options(contains_eager(LibDrive.drive))


def library_meta(entry: LibDrive) -> dict[str, str]:
    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return ",".join(value) if isinstance(value, list) else ("" if value is None else str(value))

    return {key: text(getattr(entry, key)) for key in LIBRARY_META}


async def find(s: AsyncSession, uuid: str) -> LibDrive | None:
    return (await s.scalars(catalogue().where(LibDrive.uuid == uuid))).first()


collection_views(routes, LIBDRIVE, lambda request: catalogue(), short_list=False)


@routes.get(path("libdrives/{uuid}"))
async def get(request: web.Request) -> web.Response:
    async with session(request) as s:
        return respond(LIBDRIVE.dump(await get_owned(s, catalogue().where(LibDrive.uuid == request.match_info["uuid"]),
                                                     "Library drive")))
