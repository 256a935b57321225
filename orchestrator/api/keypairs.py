"""/keypairs/ and the read-only /pubkeys/ view of the same rows (spec §35)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.api.fields import NAME, Bool, Field, Resource, Str
from orchestrator.api.resource import (
    AfterCommit,
    caller,
    collection_views,
    created,
    delete_views,
    detail_view,
    for_each,
    get_owned,
    objects_of,
    owned_row,
    owned_rows,
    path,
    read_json,
    respond,
    session,
)
from orchestrator.api.standard import acl_fields, meta_field, resource_uri_field, tags_field, uuid_field
from orchestrator.db.models import KeyPair
from orchestrator.domain.errors import invalid
from orchestrator.domain.keypairs import ALGORITHMS, KeyMaterial, delete_keypairs, generate, given_keys
from orchestrator.domain.tagging import set_resource_tags

KEY_HELP = "OpenSSH public key line, e.g. 'ssh-ed25519 AAAA… comment' (RSA up to 4096 bits or ed25519)"
COMMON = (  # the fields both views show, in both views' order
    Field("name", NAME, required=True, lookups=("exact", "contains"), column=KeyPair.name,
          orderable=True, help="Human readable name of the keypair"),
    Field("public_key", Str(max_length=16384), help=KEY_HELP),
    Field("fingerprint", Str(), readonly=True, help="MD5 fingerprint of the public key (colon-separated hex)"),
    meta_field("User defined meta information"),
    tags_field(KeyPair),
    *acl_fields(),
)

KEYPAIR = Resource("keypairs", dialect="tastypie", default_order=(KeyPair.created, KeyPair.uuid), fields=(
    uuid_field(KeyPair, "", schema={}),
    resource_uri_field("keypairs", schema={}),
    *COMMON,
    Field("private_key", Str(max_length=16384), nullable=True,
          help="Private key (PEM or OpenSSH format); null when only the public key was given"),
))
PUBKEY = Resource("pubkeys", dialect="tastypie", list_methods=("get",), detail_methods=("get",),
                  default_order=(KeyPair.created, KeyPair.uuid), fields=(
    uuid_field(KeyPair, "", schema={}),
    resource_uri_field("pubkeys", schema={}),
    *(Field(f.name, f.kind, readonly=True, nullable=f.nullable, help=f.help, lookups=f.lookups, column=f.column,
            orderable=f.orderable, get=f.get, filters=f.filters, schema=f.schema) for f in COMMON),
    Field("has_private_key", Bool(), readonly=True, get=lambda k: k.private_key is not None,
          help="Whether the private key is stored too (shown by /keypairs/ only)"),
))
# Only for creating: "rsa" or "ed25519" asks for a generated pair (spec §35 form 3).
ALGORITHM_FIELD = Field("algorithm_type", Str(), choices=ALGORITHMS)
IMMUTABLE = ("public_key", "private_key")  # keys never change: a new key is a new keypair (spec §35)

routes = web.RouteTableDef()
RELATED = (KeyPair.tag_links,)


def owned(request: web.Request) -> Select[Any]:
    return owned_rows(KeyPair, RELATED, caller(request))


def one(request: web.Request) -> Select[Any]:
    return owned_row(KeyPair, RELATED, caller(request), request.match_info["uuid"])


async def key_material(body: dict[str, Any], values: dict[str, Any]) -> KeyMaterial:
    if "algorithm_type" not in body:
        return given_keys(values.get("public_key"), values.get("private_key"))
    algorithm = ALGORITHM_FIELD.parse(body["algorithm_type"], "algorithm_type")
    if values.get("public_key") is not None or values.get("private_key") is not None:
        raise invalid("Give either algorithm_type (a generated pair) or your own keys, not both", "algorithm_type")
    return await asyncio.to_thread(generate, algorithm)  # RSA generation takes a while: off the event loop


collection_views(routes, KEYPAIR, owned, short_list=False)
collection_views(routes, PUBKEY, owned, short_list=False)


@routes.post(path("keypairs"))
async def create(request: web.Request) -> web.Response:
    """The three forms: own public and private key, own public key only, or ``algorithm_type``."""
    objects, owner = objects_of(await read_json(request)), caller(request)

    async def material(body: Any) -> tuple[dict[str, Any], KeyMaterial]:
        values = KEYPAIR.validate(body, create=True)
        return values, await key_material(body, values)

    # Every body is checked (and its pair generated) before the transaction starts; the objects then
    # become their checked values, keeping their numbering for error points.
    objects[:] = await for_each(objects, material)
    async with session(request) as s:
        async def store(item: tuple[dict[str, Any], KeyMaterial]) -> str:
            values, keys = item
            keypair = KeyPair(owner_uuid=owner, name=values["name"], meta=values.get("meta", {}),
                              public_key=keys.public_key, private_key=keys.private_key, fingerprint=keys.fingerprint)
            s.add(keypair)
            await s.flush()
            await set_resource_tags(s, "keypairs", keypair.uuid, values.get("tags", []), owner)
            return keypair.uuid

        uuids = await for_each(objects, store)
    return await created(request, KEYPAIR, owned(request), KeyPair, uuids)


detail_view(routes, KEYPAIR, one, "Keypair")
detail_view(routes, PUBKEY, one, "Keypair")


@routes.put(path("keypairs/{uuid}"))
async def edit(request: web.Request) -> web.Response:
    """name, meta and tags; the keys may be sent back unchanged (clients re-send what they got)."""
    values = KEYPAIR.validate(await read_json(request), create=False)
    async with session(request) as s:
        keypair = await get_owned(s, one(request), "Keypair")
        for key in IMMUTABLE:
            if key in values and (values[key] or "").strip() != (getattr(keypair, key) or "").strip():
                raise invalid("The keys of a keypair cannot be changed; create a new keypair", key)
        for key in ("name", "meta"):
            if key in values:
                setattr(keypair, key, values[key])
        if "tags" in values:
            await set_resource_tags(s, "keypairs", keypair.uuid, values["tags"], caller(request))
    async with session(request) as s:
        return respond(KEYPAIR.dump(await get_owned(s, one(request), "Keypair")))


async def _delete(request: web.Request, s: AsyncSession, keypairs: list[KeyPair]) -> AfterCommit:
    await delete_keypairs(s, keypairs)
    return None


delete_views(routes, "keypairs", KeyPair, "Keypair", owned, _delete)
