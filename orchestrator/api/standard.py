"""Fields that every CloudSigma resource carries (identity, owner, meta, tags, ACL view)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from orchestrator.api.fields import NOT_PROVIDED, Field, Meta, Output, RefList, Str
from orchestrator.db.models import Tag, TagLink
from orchestrator.domain.uris import link, uri

# The CloudSigma-dialect schemas show identity fields as required with a null default; the
# Tastypie-dialect ones (tags, jobs) use the stock rendering, so they pass ``schema={}``.
IDENTITY_SCHEMA = {"required": True, "default": None}


def uuid_field(model: Any, help: str, schema: dict[str, Any] = IDENTITY_SCHEMA) -> Field:
    return Field("uuid", Str(), readonly=True, short=True, lookups=("exact",), column=model.uuid,
                 orderable=True, help=help, schema=schema)


def resource_uri_field(collection: str, schema: dict[str, Any] = IDENTITY_SCHEMA) -> Field:
    return Field("resource_uri", Str(), readonly=True, short=True,
                 get=lambda row: uri(collection, row.uuid),
                 help='Unicode string data. Ex: "Hello World"', schema={k: schema[k] for k in schema if k != "default"})


def owner_field(help: str, *, required: bool, schema: dict[str, Any] | None = None) -> Field:
    # Library drives have no owner: null (spec §23).
    return Field("owner", Output(), readonly=True, short=True,
                 get=lambda row: row.owner_uuid and link("user", row.owner_uuid), help=help,
                 schema={"required": required, "default": None} if schema is None else schema)


def meta_field(help: str) -> Field:
    return Field("meta", Meta(), default=dict, help=help)


def tags_field(model: Any) -> Field:
    """Tags as links; ``?tag=<uuid>`` and ``?tag__name=<name>`` filter through the tag links."""

    def by_tag(values: list[str]) -> Any:
        return model.uuid.in_(select(TagLink.res_uuid).where(TagLink.tag_uuid.in_(values)))

    def by_tag_name(values: list[str]) -> Any:
        tagged = select(TagLink.res_uuid).join(Tag, Tag.uuid == TagLink.tag_uuid).where(Tag.name.in_(values))
        return model.uuid.in_(tagged)

    return Field("tags", RefList("tags"), get=lambda row: [link("tags", t.tag_uuid) for t in row.tag_links],
                 filters={"tag": by_tag, "tag__name": by_tag_name},
                 help="Many related resources. Can be either a list of URIs or list of individually nested "
                      "resource data.", schema={"default": NOT_PROVIDED})


def jobs_field() -> Field:
    return Field("jobs", Output(), readonly=True, get=lambda row: [link("jobs", j.job_uuid) for j in row.job_links],
                 help="Background jobs related to this resource", schema={"required": True})


def acl_fields() -> tuple[Field, ...]:
    # ACLs are out of scope (spec §38): both views are always empty lists and ignored on input.
    return tuple(
        Field(name, Output("list"), readonly=True, get=lambda row: [],
              help="A list of data. Ex: ['abc', 26.73, 8]", schema={"readonly": False})
        for name in ("grantees", "permissions")
    )


def licenses_field(get: Callable[[Any], Any]) -> Field:
    """Licences inherited from a library image: shown, never edited (spec §18)."""
    return Field("licenses", Output(), readonly=True, get=get, help="A list of licenses attached to this drive",
                 schema={"readonly": False, "default": [], "fields": {
                     "amount": {"default": 1, "help_text": "Number of licenses", "readonly": False,
                                "required": False, "type": "integer"},
                     "license": {"default": NOT_PROVIDED, "help_text": "A single related resource. Can be either a "
                                 "URI or set of nested resource data.", "readonly": False, "required": True,
                                 "type": "related"},
                     "user": {"default": None, "help_text": "Owner of the license", "readonly": False,
                              "required": False, "type": "related"}}})
