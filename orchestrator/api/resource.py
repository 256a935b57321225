"""Helpers shared by the API modules: paths, bodies, envelopes, owner-scoped loading."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from functools import cache, partial
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from orchestrator.api.fields import Invalid, ListQuery, Resource, ref_id
from orchestrator.api.rows import Rows
from orchestrator.db.engine import lock_rows
from orchestrator.db.reads import Reads
from orchestrator.domain.errors import DomainError, invalid, notexist
from orchestrator.domain.uris import API_ROOT
from orchestrator.web.auth import CallerDisabled, auth_policy
from orchestrator.web.errors import respond
from orchestrator.web.keys import READS, SESSIONS, USER

T = TypeVar("T")


def path(tail: str) -> str:
    """A route under the API root whose final slash is optional (spec §2)."""
    return f"{API_ROOT}/{tail}" + "{_slash:/?}"


def caller(request: web.Request) -> str:
    return request[USER]


def session(request: web.Request) -> Any:
    """One unit of work: ``async with session(request) as s:`` commits on success."""
    return request.app[SESSIONS].begin()


MAX_DEPTH = 32  # the deepest body any resource reads is a server's nics[].ip_v4_conf (5 levels)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e309
        raise ValueError(f"number {text} is out of range")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity


SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(value: Any) -> None:
    """Refuse nesting beyond ``MAX_DEPTH`` and text no store can hold (a lone surrogate such as
    ``"\\ud800"``), naming where (``objects.0.name``).  Iterative: deep input cannot recurse."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _lone_surrogate(item):
                raise invalid("The text is not valid Unicode (a lone surrogate)", ".".join(where) or None)
        elif isinstance(item, dict | list):
            if len(where) >= MAX_DEPTH:
                raise invalid(f"The JSON body nests deeper than {MAX_DEPTH} levels", ".".join(where) or None)
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and _lone_surrogate(key):
                    raise invalid("A key is not valid Unicode (a lone surrogate)", ".".join(where) or None)
                stack.append((child, (*where, str(key))))


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, as strictly as a store can hold it: UTF-8, finite numbers, at most
    ``MAX_DEPTH`` deep, valid Unicode; anything else is a validation error, never a 500."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise invalid(f"The JSON body nests deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise invalid(f"Malformed JSON: {e}") from None
    # The walk costs a pass over the body: only when it could find something.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH or SURROGATE_ESCAPE.search(raw):
        _walk(value)
    return value


JSON_MEDIA = re.compile(r"application/([a-z0-9.+-]+\+)?json")


def reading(request: web.Request) -> Reads:
    """Where reads rendered from :class:`Rows` run: the driver's connection (no ORM session,
    nothing to commit; ``orchestrator/db/reads.py``)."""
    return request.app[READS]


async def read_json(request: web.Request, *, empty: Any = None) -> Any:
    raw = await request.read()
    if not raw.strip():
        if empty is None:
            raise invalid("A JSON request body is required")
        return empty
    # A page of another site can POST text/plain or a form without a preflight, and the browser adds
    # the Basic credentials it holds: a JSON body must say it is JSON.
    media = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if not JSON_MEDIA.fullmatch(media):
        raise web.HTTPUnsupportedMediaType(reason="A JSON body needs Content-Type: application/json")
    return parse_json(raw)


class Objects(list[Any]):
    """The objects of a create or bulk request; ``bare`` when one object came unwrapped."""

    bare: bool = False


def objects_of(body: Any) -> Objects:
    """``{"objects": [...]}``, a bare list, or one bare object (spec §7.1)."""
    objects = Objects()
    if isinstance(body, dict) and "objects" in body:
        body = body["objects"]
    elif isinstance(body, dict):
        body, objects.bare = [body], True
    if not isinstance(body, list) or not body:
        raise invalid("Expected an object, a list of objects or {\"objects\": [...]}", "objects")
    objects.extend(body)
    return objects


async def for_each(objects: Objects, work: Callable[[Any], Awaitable[T]]) -> list[T]:
    """``await work(obj)`` for each object, collecting every error, prefixed ``objects.N.``
    unless a single bare object was sent."""
    results, errors = [], []
    for i, obj in enumerate(objects):
        try:
            results.append(await work(obj))
        except DomainError as e:
            errors.append(e if objects.bare else e.prefixed(f"objects.{i}"))
    if errors:
        raise DomainError.collect(errors)
    return results


def validated(objects: Objects, validate: Callable[[Any], dict[str, Any]]) -> Objects:
    """Each object's validated values, or the error its validation raised (for :func:`for_each`
    to report in place): validated once, before a bulk create looks up what they name."""
    checked = Objects()
    checked.bare = objects.bare
    for body in objects:
        try:
            checked.append(validate(body))
        except DomainError as e:
            checked.append(e)
    return checked


def no_content() -> web.Response:
    return web.Response(status=204)


def envelope(objects: list[dict[str, Any]], lq: ListQuery, total: int) -> dict[str, Any]:
    return {"meta": {"limit": lq.limit, "offset": lq.offset, "total_count": total}, "objects": objects}


def list_query(request: web.Request, resource: Resource) -> ListQuery:
    return resource.list_query(request.query, request.query.getall)


async def page(s: AsyncSession, stmt: Select[Any], lq: ListQuery) -> tuple[list[Any], int]:
    """Rows of one page plus the total count after filtering (``limit=0``: everything)."""
    stmt = stmt.where(*lq.where)
    total = await s.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    stmt = stmt.order_by(*lq.order_by).offset(lq.offset)
    if lq.limit:
        stmt = stmt.limit(lq.limit)
    rows = list((await s.scalars(stmt)).unique())
    return rows, total or 0


async def get_owned(s: AsyncSession, stmt: Select[Any], what: str) -> Any:
    row = (await s.scalars(stmt)).unique().first()
    if row is None:
        raise notexist(what)
    return row


async def list_view(request: web.Request, resource: Resource, stmt: Select[Any], *, short: bool,
                    prepare: Callable[[list[Any]], None] | None = None, reader: Rows | None = None) -> web.Response:
    """An envelope list; ``prepare`` may attach non-stored data (live runtime) to the rows.

    With a ``reader`` the rows are read with Core (``stmt`` gives only its where-clause)."""
    lq = list_query(request, resource)
    if reader is not None:
        where = [stmt.whereclause, *lq.where] if stmt.whereclause is not None else lq.where
        rows, total = await reader.page(reading(request), where, lq.order_by, lq.offset, lq.limit)
    else:
        async with session(request) as s:
            rows, total = await page(s, stmt, lq)
    if prepare is not None:
        prepare(rows)
    objects = [resource.dump(row, short=short, only=lq.fields) for row in rows]
    return respond(envelope(objects, lq, total))


async def read_one(request: web.Request, reader: Rows, what: str) -> Any:
    """The caller's row named by the path's ``uuid``, read with Core; 404 when there is none."""
    enabled, row = await reader.owned(reading(request), caller(request), request.match_info["uuid"])
    if not enabled:
        raise CallerDisabled()  # the auth middleware answers as for a wrong credential
    if row is None:
        raise notexist(what)
    return row


def query_uuids(request: web.Request, name: str) -> list[str]:
    """A comma-separated uuid list from the query string (``avoid``)."""
    raw = request.query.get(name, "")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    try:
        return [ref_id(v, "servers") for v in values]
    except Invalid as e:
        raise invalid(str(e), name) from None


Prepare = Callable[[web.Request], Callable[[list[Any]], None]]


def collection_views(routes: web.RouteTableDef, resource: Resource, rows: Callable[[web.Request], Select[Any]],
                     *, short_list: bool = True, prepare: Prepare | None = None, reader: Rows | None = None) -> None:
    """``GET /<coll>/``, ``/<coll>/detail/`` and ``/<coll>/schema/``, all read from the field table.

    ``rows`` gives the caller's rows; ``short_list`` False where the short view is the full one;
    ``reader`` reads them with Core instead of the ORM."""

    async def listing(request: web.Request, short: bool) -> web.Response:
        return await list_view(request, resource, rows(request), short=short,
                               prepare=prepare(request) if prepare else None, reader=reader)

    async def schema(request: web.Request) -> web.Response:
        return respond(resource.schema())

    routes.get(path(resource.name))(partial(listing, short=short_list))
    routes.get(path(f"{resource.name}/detail"))(partial(listing, short=False))
    routes.get(path(f"{resource.name}/schema"))(schema)


def detail_view(routes: web.RouteTableDef, resource: Resource, one: Callable[[web.Request], Select[Any]],
                what: str, collection: str | None = None) -> None:
    """``GET /<coll>/{uuid}/``: the caller's object in full view (404 otherwise)."""

    async def detail(request: web.Request) -> web.Response:
        async with session(request) as s:
            return respond(resource.dump(await get_owned(s, one(request), what)))

    routes.get(path(f"{collection or resource.name}/{{uuid}}"))(detail)


@cache
def _loading(model: Any, related: tuple[Any, ...], joined: bool) -> Select[Any]:
    """``select(model)`` with its loader options, built once: building the options cost more than
    the rest of a PUT's statement (bench/api.py's writer)."""
    load = joinedload if joined else selectinload
    return select(model).options(*(load(r) for r in related))


def owned_rows(model: Any, related: tuple[Any, ...], owner: str) -> Select[Any]:
    """The owner's rows with what their rendering reads, loaded per relation (lists)."""
    return _loading(model, related, False).where(model.owner_uuid == owner)


def owned_row(model: Any, related: tuple[Any, ...], owner: str, uuid: str) -> Select[Any]:
    """One of the owner's rows: a single joined query beats a query per relation."""
    return _loading(model, related, True).where(model.owner_uuid == owner, model.uuid == uuid)


async def created(request: web.Request, resource: Resource, rows: Select[Any], model: Any,
                  uuids: list[str], reader: Rows | None = None) -> web.Response:
    """201 with the new objects in full view, in request order, always in ``objects`` (spec §7.1)."""
    if reader is not None:
        page_rows, _ = await reader.page(reading(request), [rows.whereclause, model.uuid.in_(uuids)], ())
        found = {row.uuid: row for row in page_rows}
    else:
        async with session(request) as s:
            found = {row.uuid: row for row in (await s.scalars(rows.where(model.uuid.in_(uuids)))).all()}
    objects = [resource.dump(found[u]) for u in uuids]
    return respond({"objects": objects}, 201, {"Location": objects[0]["resource_uri"]})


Action = Callable[[web.Request], Awaitable[web.StreamResponse]]


def action_route(routes: web.RouteTableDef, collection_path: str, actions: dict[str, Action], *,
                 policy: Any = None) -> None:
    """``POST <collection_path>/?do=<name>``: one handler dispatching to ``actions`` (spec §7.4)."""

    async def action(request: web.Request) -> web.StreamResponse:
        do = request.query.get("do")
        if do not in actions:
            raise invalid(f"Unknown action {do!r}; one of: {', '.join(actions)}", "do")
        return await actions[do](request)

    if policy is not None:
        auth_policy(policy)(action)
    routes.post(path(collection_path))(action)


AfterCommit = Callable[[], Awaitable[None]] | None
DeleteRows = Callable[[web.Request, AsyncSession, list[Any]], Awaitable[AfterCommit]]


def delete_views(routes: web.RouteTableDef, collection: str, model: Any, what: str,
                 owned: Callable[[web.Request], Select[Any]], delete_rows: DeleteRows) -> None:
    """``DELETE /<coll>/{uuid}/`` and the bulk ``DELETE /<coll>/`` (a list of uuids or objects): the
    rows go in one transaction (all or none, errors per object); ``delete_rows`` may return a
    step to run after the commit (the hosts delete the volumes)."""

    async def remove(request: web.Request, wanted: Objects) -> web.Response:
        async with session(request) as s:
            named = (obj.get("uuid") if isinstance(obj, dict) else obj for obj in wanted)
            ids = [uuid for uuid in named if isinstance(uuid, str)]
            await lock_rows(s, model, ids)
            # Every object's row (and what deleting it reads) in one query per relation, not per object.
            rows = {row.uuid: row for row in (await s.scalars(owned(request).where(model.uuid.in_(ids)))).unique()}

            async def find(obj: Any) -> Any:
                uuid = obj.get("uuid") if isinstance(obj, dict) else obj
                if not isinstance(uuid, str):
                    raise invalid("Each object needs a uuid", "uuid")
                if uuid not in rows:
                    raise notexist(what)
                return rows[uuid]

            after = await delete_rows(request, s, await for_each(wanted, find))
        if after is not None:
            await after()
        return no_content()

    async def remove_one(request: web.Request) -> web.Response:
        wanted = Objects([request.match_info["uuid"]])
        wanted.bare = True
        return await remove(request, wanted)

    async def remove_many(request: web.Request) -> web.Response:
        return await remove(request, objects_of(await read_json(request)))

    routes.delete(path(f"{collection}/{{uuid}}"))(remove_one)
    routes.delete(path(collection))(remove_many)
