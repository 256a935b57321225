"""/profile/: the caller's account; only ``clone_naming`` has behaviour here (spec §36).

The other upstream keys (``dumps/response_profile``) are there because clients read them: the
personal ones are accepted and echoed (kept in ``User.profile``), billing and tax ones are fixed,
and ``state`` is always ``REGULAR``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from orchestrator.api.fields import NOT_PROVIDED, Bool, Field, Invalid, Kind, Meta, Output, Resource, Str
from orchestrator.api.resource import caller, path, read_json, respond, session
from orchestrator.db.models import User
from orchestrator.domain.clone_naming import STRATEGIES
from orchestrator.domain.uris import API_ROOT


@dataclass(frozen=True)
class Decimal(Kind):
    """Tastypie's DecimalField: a number, or its decimal text; echoed as text."""

    schema_type: ClassVar[str] = "decimal"

    def parse(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise Invalid("A decimal number is required")
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?(\d{1,30}(\.\d{0,30})?|\.\d{1,30})([eE][+-]?\d{1,3})?", text, re.ASCII) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise Invalid("A decimal number is required")
        return text


def kept(name: str, kind: Kind, default: Any, *, nullable: bool = False, help: str = "",
         schema: dict[str, Any] | None = None) -> Field:
    """An upstream key without behaviour: stored in ``User.profile`` as sent."""
    if isinstance(kind, Decimal):
        schema = {"default": 0}  # upstream's schema shows the number, its objects the text
    return Field(name, kind, default=default, nullable=nullable, help=help, schema=schema or {},
                 get=lambda user: user.profile.get(name, default))


def fixed(name: str, value: Any, kind: Kind, *, nullable: bool = True) -> Field:
    """An upstream key this cloud has no data for (billing, tax): always ``value``."""
    return Field(name, Output(kind.schema_type), readonly=True, nullable=nullable, get=lambda user: value)


TEXT, ZERO = Str(max_length=1024), "0"

PROFILE = Resource("profile", dialect="tastypie", list_methods=("get", "put"), detail_methods=("get", "put"),
                   fields=(
    Field("uuid", Str(), readonly=True),
    Field("email", Str(), readonly=True),
    Field("clone_naming", Str(), default="NONE", choices=STRATEGIES,
          help="Naming strategy for clones made without a name"),
    Field("meta", Meta(), default=dict, schema={"default": NOT_PROVIDED}),  # as dumps/response_profile_schema
    Field("state", Output("string"), readonly=True, get=lambda user: "REGULAR"),
    Field("signup_time", Output("datetime"), readonly=True, get=lambda user: user.created.isoformat(),
          help='A date & time as a string. Ex: "2010-11-10T03:07:43"', schema={"readonly": False}),
    kept("first_name", TEXT, ""),
    kept("last_name", TEXT, ""),
    kept("nickname", TEXT, "", help="User nickname"),
    kept("title", TEXT, "", help="User title"),
    kept("company", TEXT, ""),
    kept("address", TEXT, ""),
    kept("town", TEXT, ""),
    kept("postcode", TEXT, None, nullable=True, schema={"default": NOT_PROVIDED}),
    kept("country", TEXT, ""),
    kept("phone", TEXT, ""),
    kept("vat", TEXT, ""),
    kept("language", TEXT, "EN"),
    kept("my_notes", Str(max_length=8192), "", nullable=True),
    kept("reseller", TEXT, ""),
    kept("api_https_only", Bool(), False),
    kept("key_auth", Bool(), False),
    kept("mailing_list", Bool(), True),
    kept("invoicing", Bool(), True),
    kept("has_autotopup", Bool(), False),
    kept("has_tx_autotopup", Bool(), False),
    kept("autotopup_amount", Decimal(), ZERO),
    kept("autotopup_threshold", Decimal(), ZERO),
    kept("tx_autotopup_amount", Decimal(), ZERO),
    kept("tx_autotopup_threshold", Decimal(), ZERO),
    fixed("bank_reference", None, Str()),
    fixed("currency", None, Str()),
    fixed("network_restrictions", None, Str()),
    fixed("tax_name", None, Str()),
    fixed("tax_rate", None, Decimal()),
    Field("resource_uri", Output("string"), readonly=True, get=lambda user: f"{API_ROOT}/profile/"),
))
COLUMNS = ("clone_naming", "meta")  # the rest of the writable keys live in User.profile

routes = web.RouteTableDef()


@routes.get(path("profile"))
async def get(request: web.Request) -> web.Response:
    async with session(request) as s:
        return respond(PROFILE.dump(await s.get(User, caller(request))))


@routes.put(path("profile"))
async def edit(request: web.Request) -> web.Response:
    """Merge semantics: keys not sent keep their values (spec §36)."""
    values = PROFILE.validate(await read_json(request), create=False)
    async with session(request) as s:
        user = await s.get(User, caller(request))
        for key in COLUMNS:
            if key in values:
                setattr(user, key, values.pop(key))
        if values:
            user.profile = {**user.profile, **values}  # a new dict: JSON columns track assignment only
        return respond(PROFILE.dump(user))


@routes.get(path("profile/schema"))
async def schema(request: web.Request) -> web.Response:
    return respond(PROFILE.schema())
