"""/jobs/: long operations and their progress (spec §32)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import Select, select
from sqlalchemy.orm import selectinload

from orchestrator.api.fields import Field, Output, Resource, Str
from orchestrator.api.resource import caller, collection_views, get_owned, path, respond, session
from orchestrator.api.standard import resource_uri_field, uuid_field
from orchestrator.db.models import Job


def _children(job: Job) -> list[dict[str, Any]]:
    return [JOB.dump(child) for child in job.children]


def _data(job: Job) -> dict[str, Any]:
    return {"progress": job.progress} if job.error is None else {"progress": job.progress, "error": job.error}


JOB = Resource("jobs", dialect="tastypie", list_methods=("get",), detail_methods=("get",),
               default_order=(Job.last_modified.desc(), Job.uuid), fields=(
    uuid_field(Job, "", schema={"unique": True, "readonly": False}),
    resource_uri_field("jobs", schema={}),
    Field("operation", Str(), readonly=True, nullable=True),
    Field("state", Str(), readonly=True, lookups=("exact",), column=Job.state, schema={"default": "started",
                                                                                         "readonly": False}),
    # ``error``: why a failed job failed (issue 11); an extra key of ``data`` that clients ignore.
    Field("data", Output("object"), readonly=True, nullable=True, get=_data,
          help="Meta information related to this background job"),
    Field("resources", Output("list"), readonly=True, nullable=True, get=lambda job: job.resources,
          help="Resources linked to this background job."),
    Field("children", Output(), readonly=True, nullable=True, get=_children,
          help="Background jobs, initiated by this job."),
    Field("created", Output("datetime"), readonly=True, get=lambda job: job.created.isoformat()),
    Field("last_modified", Output("datetime"), readonly=True, orderable=True, column=Job.last_modified,
          get=lambda job: job.last_modified.isoformat()),
))

routes = web.RouteTableDef()


def owned(request: web.Request) -> Select[Any]:
    # Children are loaded two levels deep: a server clone's drive clones (spec §32).
    return (select(Job).where(Job.owner_uuid == caller(request), Job.parent_uuid.is_(None))
            .options(selectinload(Job.children).selectinload(Job.children)))


collection_views(routes, JOB, owned, short_list=False)


@routes.get(path("jobs/{uuid}"))
async def get(request: web.Request) -> web.Response:
    stmt = (select(Job).where(Job.owner_uuid == caller(request), Job.uuid == request.match_info["uuid"])
            .options(selectinload(Job.children).selectinload(Job.children)))
    async with session(request) as s:
        return respond(JOB.dump(await get_owned(s, stmt, "Job")))
