"""/tags/: tags and the resources they group (spec §29)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import Select, delete, select
from sqlalchemy.orm import selectinload

from orchestrator.api import drives, networks, servers
from orchestrator.api.fields import NAME, NOT_PROVIDED, Field, Invalid, Kind, Meta, Resource, ref_id
from orchestrator.api.resource import (
    caller,
    collection_views,
    created,
    detail_view,
    for_each,
    get_owned,
    list_view,
    no_content,
    objects_of,
    path,
    read_json,
    respond,
    session,
)
from orchestrator.api.standard import owner_field, resource_uri_field, uuid_field
from orchestrator.db.models import Drive, Ip, KeyPair, Server, Tag, TagLink, Vlan
from orchestrator.domain.errors import DomainError, invalid
from orchestrator.domain.uris import link, uri

TAGGABLE = {"servers": Server, "drives": Drive, "ips": Ip, "vlans": Vlan, "keypairs": KeyPair}


def _resources(tag: Tag) -> list[dict[str, Any]]:
    return [{"owner": link("user", tag.owner_uuid), "res_type": ln.res_type,
             "resource_uri": uri(ln.res_type, ln.res_uuid), "uuid": ln.res_uuid} for ln in tag.links]


class AnyRefList(Kind):
    """References to objects of any taggable type: the type is found by lookup later."""

    schema_type = "related"

    def parse(self, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise Invalid("A list of references is required")
        ids = []
        for item in value:
            try:
                ids.append(ref_id(item, item.get("res_type", "servers") if isinstance(item, dict) else "servers"))
            except Invalid:
                if not isinstance(item, str):
                    raise
                ids.append(item)  # an IP address, or a URI of another collection
        return ids

    def empty(self) -> list[str]:
        return []


TAG = Resource("tags", dialect="tastypie", default_order=(Tag.created, Tag.uuid), fields=(
    uuid_field(Tag, "", schema={}),
    resource_uri_field("tags", schema={}),
    owner_field("A single related resource. Can be either a URI or set of nested resource data.", required=True,
                schema={}),
    Field("name", NAME, required=True, short=True, lookups=("exact",), column=Tag.name,
          orderable=True),
    Field("meta", Meta(), default=dict, schema={"default": NOT_PROVIDED}),  # as dumps/response_tags_schema
    Field("resources", AnyRefList(), nullable=True, get=_resources,
          help="Many related resources. Can be either a list of URIs or list of individually nested resource data."),
))

routes = web.RouteTableDef()


def owned(request: web.Request) -> Select[Any]:
    return select(Tag).where(Tag.owner_uuid == caller(request)).options(selectinload(Tag.links))


def one(request: web.Request) -> Select[Any]:
    return owned(request).where(Tag.uuid == request.match_info["uuid"])


async def resolve_resources(s: Any, ids: list[str], owner: str) -> list[tuple[str, str]]:
    """Resource ids → ``(res_type, uuid)`` pairs of the owner's objects, found by lookup."""
    out, errors = [], []
    for i, uuid in enumerate(ids):
        found = None
        for res_type, model in TAGGABLE.items():
            if await s.scalar(select(model.uuid).where(model.uuid == uuid, model.owner_uuid == owner)):
                found = (res_type, uuid)
                break
        if found is None:
            errors.append(invalid(f"Resource {uuid!r} does not exist", f"resources.{i}"))
        else:
            out.append(found)
    if errors:
        raise DomainError.collect(errors)
    return list(dict.fromkeys(out))


async def write_tag(s: Any, tag: Tag, values: dict[str, Any], body: dict[str, Any], owner: str) -> None:
    for key in ("name", "meta"):
        if key in values:
            setattr(tag, key, values[key])
    if "resources" in body:  # the parsed references (uuid, URI or object forms, spec §5.1); null = none
        pairs = await resolve_resources(s, values.get("resources") or [], owner)
        await s.execute(delete(TagLink).where(TagLink.tag_uuid == tag.uuid))
        s.add_all(TagLink(tag_uuid=tag.uuid, res_type=t, res_uuid=u, position=i) for i, (t, u) in enumerate(pairs))
    await s.flush()


collection_views(routes, TAG, owned, short_list=False)


@routes.post(path("tags"))
async def create(request: web.Request) -> web.Response:
    objects, owner = objects_of(await read_json(request)), caller(request)
    async with session(request) as s:
        async def make(body: Any) -> str:
            values = TAG.validate(body, create=True)
            tag = Tag(owner_uuid=owner, name=values["name"], meta=values.get("meta", {}))
            s.add(tag)
            await s.flush()
            await write_tag(s, tag, values, body, owner)
            return tag.uuid

        uuids = await for_each(objects, make)
    return await created(request, TAG, owned(request), Tag, uuids)


detail_view(routes, TAG, one, "Tag")


@routes.put(path("tags/{uuid}"))
async def edit(request: web.Request) -> web.Response:
    body = await read_json(request)
    values = TAG.validate(body, create=False)
    async with session(request) as s:
        tag = await get_owned(s, one(request), "Tag")
        await write_tag(s, tag, values, body, caller(request))
    async with session(request) as s:
        return respond(TAG.dump(await get_owned(s, one(request), "Tag")))


@routes.delete(path("tags/{uuid}"))
async def remove(request: web.Request) -> web.Response:
    async with session(request) as s:
        await s.delete(await get_owned(s, one(request), "Tag"))
    return no_content()


TAGGED_VIEWS = {"servers": (servers.SERVER, servers.owned, Server), "drives": (drives.DRIVE, drives.owned, Drive),
                "ips": (networks.IP, networks.owned_ips, Ip), "vlans": (networks.VLAN, networks.owned_vlans, Vlan)}


@routes.get(path("tags/{uuid}/{res_type:servers|drives|ips|vlans}"))
@routes.get(path("tags/{uuid}/{res_type:servers|drives|ips|vlans}/{detail:detail}"))
async def tagged(request: web.Request) -> web.Response:
    async with session(request) as s:
        await get_owned(s, one(request), "Tag")
    if request.match_info["res_type"] not in TAGGED_VIEWS:
        return respond({"meta": {"limit": 20, "offset": 0, "total_count": 0}, "objects": []})
    resource, owned_rows, model = TAGGED_VIEWS[request.match_info["res_type"]]
    links = select(TagLink.res_uuid).where(TagLink.tag_uuid == request.match_info["uuid"])
    stmt = owned_rows(request).where(model.uuid.in_(links))
    return await list_view(request, resource, stmt, short="detail" not in request.match_info)
