"""/ips/ and /vlans/: addresses and private networks granted by the operator (spec §25, §26).

Both are read-only for users except ``meta`` and ``tags``; the operator creates and assigns them
(``strato networks|ips|vlans``, orchestrator/cli/networks.py).  ``/ips/`` also lists the addresses
DHCP currently leases to the caller's running servers (no subscription).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web
from sqlalchemy import Select

from orchestrator.api.fields import Field, Meta, Output, Resource, contains_filter, exact_filter
from orchestrator.api.resource import (
    caller,
    collection_views,
    get_owned,
    owned_row,
    owned_rows,
    path,
    read_json,
    respond,
    session,
)
from orchestrator.api.standard import acl_fields, owner_field, resource_uri_field, tags_field, uuid_field
from orchestrator.db.models import Ip, Vlan
from orchestrator.domain.tagging import set_resource_tags
from orchestrator.domain.uris import link, uri


def _subscription(row: Ip | Vlan) -> dict[str, Any] | None:
    if row.subscription is None:
        return None
    return {"id": row.subscription, "resource_uri": uri("subscriptions", row.subscription)}


def _meta_field(model: Any) -> Field:
    """``meta``; ``?name=`` and ``?name__contains=`` match ``meta.name`` (spec §6.4)."""
    name = model.meta["name"].as_string()
    contains = contains_filter(name)
    return Field("meta", Meta(), default=dict, help="User defined meta information",
                 filters={"name": exact_filter(name), "name__contains": contains, "name__icontains": contains})


def _prefix(ip: Ip) -> int:
    return int(ip.network.subnet.rsplit("/", 1)[1])


IP = Resource("ips", list_methods=("get",), detail_methods=("get", "put"), default_order=(Ip.created, Ip.uuid),
              schema_extra={"allowed_list_http_methods": "get"},  # a string in dumps/response_ip_schema
              fields=(
    replace(uuid_field(Ip, "IP UUID, in this case, the actual IP"), orderable=False),  # no "ordering" in the dump
    resource_uri_field("ips"),
    owner_field("IP owner", required=False),
    Field("server", Output(), readonly=True, short=True,
          get=lambda ip: ip.server_uuid and link("servers", ip.server_uuid),
          help="Reference to server using that IP"),
    Field("subscription", Output(), readonly=True, get=_subscription, help="Subscription, related to this IP",
          schema={"default": None}),
    Field("netmask", Output("integer"), readonly=True, get=_prefix, help="IP netmask",
          schema={"required": True, "default": None}),
    Field("gateway", Output("string"), readonly=True, get=lambda ip: ip.network.gateway, help="Gateway IP",
          schema={"required": True, "default": None}),
    Field("nameservers", Output("list"), readonly=True, get=lambda ip: list(ip.network.nameservers),
          help="Nameserver IPs", schema={"default": None}),
    _meta_field(Ip),
    tags_field(Ip),
    *acl_fields(),
))

VLAN = Resource("vlans", list_methods=("get",), detail_methods=("get", "put"),
                default_order=(Vlan.created, Vlan.uuid),
                schema_extra={"allowed_list_http_methods": "get"},  # as dumps/response_vlan_schema
                fields=(
    replace(uuid_field(Vlan, "VLAN UUID"), orderable=False),
    resource_uri_field("vlans"),
    owner_field("VLAN owner", required=False),
    Field("servers", Output(), readonly=True, get=lambda v: [link("servers", m.server_uuid) for m in v.members],
          help="Servers in this VLAN", schema={"default": []}),
    Field("subscription", Output(), readonly=True, get=_subscription, help="Subscription related to this VLAN",
          schema={"default": None}),
    Field("bottom_vlan_tag", Output("integer"), readonly=True, get=lambda v: v.tag,
          help="Integer data. Ex: 2673", schema={"default": None}),
    _meta_field(Vlan),
    tags_field(Vlan),
    *acl_fields(),
))

IP_RELATED = (Ip.network, Ip.tag_links)
VLAN_RELATED = (Vlan.members, Vlan.tag_links)
routes = web.RouteTableDef()


def owned_ips(request: web.Request) -> Select[Any]:
    return owned_rows(Ip, IP_RELATED, caller(request))


def owned_vlans(request: web.Request) -> Select[Any]:
    return owned_rows(Vlan, VLAN_RELATED, caller(request))


collection_views(routes, IP, owned_ips)
collection_views(routes, VLAN, owned_vlans)


async def _get(request: web.Request, resource: Resource, model: Any, related: tuple[Any, ...],
               what: str) -> web.Response:
    async with session(request) as s:
        row = await get_owned(s, owned_row(model, related, caller(request), request.match_info["uuid"]), what)
        return respond(resource.dump(row))


async def _edit(request: web.Request, resource: Resource, model: Any, related: tuple[Any, ...],
                what: str) -> web.Response:
    """Only ``meta`` and ``tags`` change (spec §25, §26); other keys are ignored."""
    values = resource.validate(await read_json(request), create=False)
    stmt = owned_row(model, related, caller(request), request.match_info["uuid"])
    async with session(request) as s:
        row = await get_owned(s, stmt, what)
        if "meta" in values:
            row.meta = values["meta"]
        if "tags" in values:
            await set_resource_tags(s, resource.name, row.uuid, values["tags"], caller(request))
    async with session(request) as s:
        return respond(resource.dump(await get_owned(s, stmt, what)))


@routes.get(path("ips/{uuid}"))
async def get_ip(request: web.Request) -> web.Response:
    return await _get(request, IP, Ip, IP_RELATED, "IP")


@routes.put(path("ips/{uuid}"))
async def edit_ip(request: web.Request) -> web.Response:
    return await _edit(request, IP, Ip, IP_RELATED, "IP")


@routes.get(path("vlans/{uuid}"))
async def get_vlan(request: web.Request) -> web.Response:
    return await _get(request, VLAN, Vlan, VLAN_RELATED, "VLAN")


@routes.put(path("vlans/{uuid}"))
async def edit_vlan(request: web.Request) -> web.Response:
    return await _edit(request, VLAN, Vlan, VLAN_RELATED, "VLAN")
