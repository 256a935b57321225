"""Declarative field tables and the walkers that read them.

A resource declares each field once (type, default, required, readonly,
choices, help, short/full view, filter lookups, row path).  Four walkers read
the same table, so no field list is written twice:

* :meth:`Resource.validate` turns a request body into typed values, or into
  every :class:`DomainError` with its ``error_point``;
* :meth:`Resource.dump` serialises the short / full view and ``?fields=``;
* :meth:`Resource.schema` renders ``/schema/`` in the resource's dialect
  (CloudSigma's own or Tastypie's, both seen in ``spec/dumps``);
* :meth:`Resource.list_query` turns ``?name__contains=a,b&limit=..`` into SQL.
"""

from __future__ import annotations

import keyword
import math
import operator
import re
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sqlalchemy import ColumnElement, or_

from orchestrator.domain.errors import DomainError, invalid
from orchestrator.domain.uris import API_ROOT

NOT_PROVIDED = "No default provided."  # str() of Tastypie's NOT_PROVIDED, as schemas show it


class Missing:
    """Marks "no default": the key is absent from the create result."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = Missing()


# --- value kinds -----------------------------------------------------------------------------------


class Invalid(Exception):
    """A value that a kind refuses; the walker adds the error point."""


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what every store's integer column holds
CONTROL = re.compile("[\x00-\x1f\x7f\ufffe\uffff]")  # and what XML cannot carry


def _no_nul(text: str) -> str:
    """Text any store can hold: no NUL, and valid Unicode (no lone surrogate: JSON's ``"\\ud800"``)."""
    if "\x00" in text:
        raise Invalid("NUL characters are not allowed")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("The text is not valid Unicode (a lone surrogate)") from None
    return text


class Kind:
    schema_type: ClassVar[str] = "string"

    def parse(self, value: Any) -> Any:
        raise NotImplementedError

    def empty(self) -> Any:
        """What JSON null means for this kind (lists: empty list, spec §7.2)."""
        return None


@dataclass(frozen=True)
class Str(Kind):
    max_length: int | None = None
    controls: bool = True           # False: no control characters (names, passwords: one line of text)
    schema_type: ClassVar[str] = "string"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid("A string is required")
        if self.max_length is not None and len(value) > self.max_length:
            raise Invalid(f"Ensure this value has at most {self.max_length} characters")
        _no_nul(value)
        if not self.controls and CONTROL.search(value):
            raise Invalid("Control characters (line breaks, tabs, ...) are not allowed")
        return value


NAME = Str(max_length=1024, controls=False)  # every resource's ``name``


@dataclass(frozen=True)
class Int(Kind):
    minimum: int = INT64_MIN        # never beyond a 64-bit column, whatever the field says
    maximum: int = INT64_MAX
    schema_type: ClassVar[str] = "integer"

    def __post_init__(self) -> None:
        assert INT64_MIN <= self.minimum <= self.maximum <= INT64_MAX, "Int bounds outside 64 bits"

    def parse(self, value: Any) -> int:
        # Integers may arrive as decimal strings (pycloudsigma sends "size": "1024000000") or
        # as floats with a zero fraction (spec §5.3); booleans are not integers here.
        if isinstance(value, bool):
            raise Invalid("An integer is required")
        integral_float = isinstance(value, float) and math.isfinite(value) and value.is_integer()
        decimal_text = isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,30}\s*", value)  # ASCII digits
        if not (isinstance(value, int) or integral_float or decimal_text):
            raise Invalid("An integer is required")
        number = int(value)
        if number < self.minimum:
            raise Invalid(f"Ensure this value is greater than or equal to {self.minimum}")
        if number > self.maximum:
            raise Invalid(f"Ensure this value is less than or equal to {self.maximum}")
        return number


@dataclass(frozen=True)
class Bool(Kind):
    schema_type: ClassVar[str] = "boolean"

    def parse(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid("A boolean (true or false) is required")
        return value


@dataclass(frozen=True)
class Meta(Kind):
    """User meta: str → str; scalars become strings, nesting is refused (spec §28)."""

    schema_type: ClassVar[str] = "dict"

    def parse(self, value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise Invalid("An object of string keys and values is required")
        out: dict[str, str] = {}
        for key, item in value.items():
            if len(key) > 32:
                raise Invalid(f"Meta key {key[:40]!r} is longer than 32 characters")
            if isinstance(item, bool):
                item = "true" if item else "false"
            elif isinstance(item, int | float):
                item = str(item)
            elif not isinstance(item, str):
                raise Invalid(f"Meta value of {key!r} must be a string")
            out[_no_nul(key)] = _no_nul(item)
        return out

    def empty(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class StrList(Kind):
    choices: tuple[str, ...] | None = None
    schema_type: ClassVar[str] = "list"

    def parse(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Invalid("A list of strings is required")
        for item in value:
            _no_nul(item)
            if self.choices is not None and item not in self.choices:
                raise Invalid(f"Select a valid choice. {item!r} is not one of the available choices")
        return list(value)

    def empty(self) -> list[str]:
        return []


def ref_id(value: Any, collection: str, aliases: tuple[str, ...] = ()) -> str:
    """A reference in any of the three input forms (spec §5.1) → the bare id.  ``aliases``: other
    collections whose URIs name the same objects (a server's keypairs are linked as ``/pubkeys/``)."""
    if isinstance(value, dict):
        value = value.get("uuid") or value.get("resource_uri")
    if not isinstance(value, str) or not value:
        raise Invalid(f"A reference to {collection} (uuid, URI or object) is required")
    _no_nul(value)
    if value.startswith("/"):
        prefix = next((p for p in (f"{API_ROOT}/{c}/" for c in (collection, *aliases)) if value.startswith(p)), None)
        if prefix is None:
            raise Invalid(f"{value!r} is not a {collection} URI")
        value = value[len(prefix):].strip("/")
    if collection == "ips":
        return value
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise Invalid(f"{value!r} is not a valid uuid") from None


@dataclass(frozen=True)
class Ref(Kind):
    collection: str
    schema_type: ClassVar[str] = "related"

    def parse(self, value: Any) -> str:
        return ref_id(value, self.collection)


@dataclass(frozen=True)
class RefList(Kind):
    collection: str
    aliases: tuple[str, ...] = ()
    schema_type: ClassVar[str] = "related"

    def parse(self, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise Invalid("A list of references is required")
        return [ref_id(item, self.collection, self.aliases) for item in value]

    def empty(self) -> list[str]:
        return []


@dataclass(frozen=True)
class Nested(Kind):
    """An object (or, with ``many``, a list of objects) with its own field table."""

    fields: tuple[Field, ...]
    many: bool = False
    schema_type: ClassVar[str] = "related"

    def parse(self, value: Any) -> Any:
        if self.many:
            if not isinstance(value, list):
                raise Invalid("A list of objects is required")
            return [self._one(item, str(i)) for i, item in enumerate(value)]
        return self._one(value, None)

    def _one(self, value: Any, point: str | None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _NestedInvalid(invalid("An object is required", point))
        try:
            return validate_fields(self.fields, value, create=True)
        except DomainError as e:
            raise _NestedInvalid(e.prefixed(point) if point else e) from None

    def empty(self) -> Any:
        return [] if self.many else None


class _NestedInvalid(Invalid):
    def __init__(self, error: DomainError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Output(Kind):
    """Read-only data computed for output (runtime, links); never parsed."""

    schema_type: str = "related"  # type: ignore[misc]

    def parse(self, value: Any) -> Any:  # pragma: no cover - readonly fields are never parsed
        raise Invalid("read-only")


# --- fields ---------------------------------------------------------------------------------------

Getter = Callable[[Any], Any]
FilterBuilder = Callable[[list[str]], ColumnElement[bool]]


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    required: bool = False
    readonly: bool = False
    default: Any = MISSING          # value (or zero-argument callable) applied on create
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    help: str = ""
    short: bool = False             # part of the short list view
    lookups: tuple[str, ...] = ()   # filters: "exact" → ?name=, "contains" → ?name__contains=
    column: Any = None              # ORM attribute for filters and ordering
    get: Getter | None = None       # output value from a row; default: getattr(row, name)
    orderable: bool = False
    filters: Mapping[str, FilterBuilder] = field(default_factory=dict)  # extra ?param= filters
    schema: Mapping[str, Any] = field(default_factory=dict)  # schema keys that differ from the rules

    def __post_init__(self) -> None:
        # Contradictions fail at import, as DRF's build-time asserts do.
        assert not (self.readonly and self.required), f"{self.name}: read-only fields are never asked for"
        assert not (self.required and self.default is not MISSING), f"{self.name}: required with default"
        assert not (self.lookups or self.orderable) or self.column is not None, f"{self.name}: no column"

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def parse(self, value: Any, point: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            empty = self.kind.empty()
            if empty is None:
                raise invalid("This field may not be null", point)
            return empty
        try:
            parsed = self.kind.parse(value)
        except _NestedInvalid as e:
            raise e.error.prefixed(point) from None
        except Invalid as e:
            raise invalid(str(e), point) from None
        if self.choices is not None and parsed not in self.choices:
            raise invalid(
                f"Select a valid choice. {parsed!r} is not one of the available choices: "
                f"{', '.join(self.choices)}",
                point,
            )
        return parsed

    def output(self, row: Any) -> Any:
        return self.get(row) if self.get is not None else getattr(row, self.name)


def validate_fields(fields: Sequence[Field], body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
    """Typed values for the writable keys of ``body``; on create also defaults.

    Unknown and read-only keys are ignored (spec §5.3).  Every error is collected.
    """
    values: dict[str, Any] = {}
    errors: list[DomainError] = []
    for f in fields:
        if f.readonly:
            continue
        if f.name in body:
            try:
                values[f.name] = f.parse(body[f.name], f.name)
            except DomainError as e:
                errors.append(e)
        elif create:
            if f.required:
                errors.append(invalid("This field is required", f.name))
            elif f.default is not MISSING:
                values[f.name] = f.default_value()
    if errors:
        raise DomainError.collect(errors)
    return values


# --- list queries ----------------------------------------------------------------------------------


def split_values(raw: str) -> list[str]:
    """``a,b\\,c`` → ``["a", "b,c"]``: commas OR values, ``\\,`` escapes one (spec §6.4)."""
    values, current, i = [], [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] in ",\\":
            current.append(raw[i + 1])
            i += 2
            continue
        if ch == ",":
            values.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    values.append("".join(current))
    return values


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def exact_filter(column: Any) -> FilterBuilder:
    return lambda values: column.in_(values)


def contains_filter(column: Any) -> FilterBuilder:
    return lambda values: or_(*(column.ilike(f"%{_like_escape(v)}%", escape="\\") for v in values))


@dataclass
class ListQuery:
    limit: int
    offset: int
    where: list[ColumnElement[bool]]
    order_by: list[Any]
    fields: set[str] | None


def _non_negative(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name, "")
    if raw == "":
        return default
    if not re.fullmatch("[0-9]{1,18}", raw):  # ASCII digits, within a 64-bit column
        raise invalid(f"{name} must be a non-negative integer", name)
    return int(raw)


def selected_fields(query: Mapping[str, str]) -> set[str] | None:
    raw = query.get("fields")
    return {name.strip() for name in raw.split(",") if name.strip()} if raw else None


# --- resources ------------------------------------------------------------------------------------


def _dumper(fields: Sequence[Field]) -> Callable[[Any], dict[str, Any]]:
    """``row → {name: value}`` for ``fields``, generated as one dict display (as dataclasses
    generate ``__init__``): a field without a getter is a plain attribute load, one with a getter
    a call.  A 1,000-row list then costs no loop over the table per row."""
    env: dict[str, Any] = {}
    items = []
    for i, f in enumerate(fields):
        if f.get is None and f.name.isidentifier() and not keyword.iskeyword(f.name):
            items.append(f"{f.name!r}: row.{f.name}")
        else:
            env[f"get{i}"] = f.get or operator.attrgetter(f.name)
            items.append(f"{f.name!r}: get{i}(row)")
    exec(f"def dump(row):\n    return {{{', '.join(items)}}}\n", env)  # the source holds only field names
    return env["dump"]  # type: ignore[no-any-return]


Dialect = Literal["cloudsigma", "tastypie"]

_TASTYPIE_HELP = {
    "string": 'Unicode string data. Ex: "Hello World"',
    "integer": "Integer data. Ex: 2673",
    "boolean": "Boolean data. Ex: True",
    "dict": "A dictionary of data. Ex: {'price': 26.73, 'name': 'Daniel'}",
    "list": "A list of data. Ex: ['abc', 26.73, 8]",
}


@dataclass(frozen=True)
class Resource:
    name: str                                   # collection name in URLs
    fields: tuple[Field, ...]
    dialect: Dialect = "cloudsigma"
    list_methods: tuple[str, ...] = ("get", "post")
    detail_methods: tuple[str, ...] = ("get", "put", "delete")
    default_limit: int = 20
    default_order: tuple[Any, ...] = ()
    schema_extra: Mapping[str, Any] = field(default_factory=dict)
    by_name: Mapping[str, Field] = field(init=False, repr=False)
    filters: Mapping[str, FilterBuilder] = field(init=False, repr=False)
    # one generated function per view (full, short): dumping a 1,000-row list runs only these
    views: Mapping[str, Callable[[Any], dict[str, Any]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        assert len(names) == len(set(names)), f"{self.name}: duplicate field"
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})
        filters: dict[str, FilterBuilder] = {}
        for f in self.fields:
            for lookup in f.lookups:
                if lookup == "exact":
                    filters[f.name] = exact_filter(f.column)
                elif lookup == "contains":
                    # libdrives spell it __icontains; both spellings work everywhere (spec §6.4).
                    contains = contains_filter(f.column)
                    filters[f"{f.name}__contains"] = filters[f"{f.name}__icontains"] = contains
                else:
                    raise AssertionError(f"{self.name}.{f.name}: unknown lookup {lookup}")
            filters.update(f.filters)
        object.__setattr__(self, "filters", filters)
        object.__setattr__(self, "views", {"full": _dumper(self.fields),
                                           "short": _dumper(tuple(f for f in self.fields if f.short))})

    @property
    def plain(self) -> tuple[str, ...]:
        """The fields output as their row holds them (no getter)."""
        return tuple(f.name for f in self.fields if f.get is None)

    # validation
    def validate(self, body: Any, *, create: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise invalid("A JSON object is required", None)
        return validate_fields(self.fields, body, create=create)

    # serialisation
    def dump(self, row: Any, *, short: bool = False, only: set[str] | None = None) -> dict[str, Any]:
        if only is not None:  # ?fields= picks from every field, in either view
            return {f.name: f.output(row) for f in self.fields if f.name in only}
        return self.views["short" if short else "full"](row)

    # list queries
    def list_query(self, query: Mapping[str, str], getall: Callable[[str], list[str]]) -> ListQuery:
        where = []
        for param in dict.fromkeys(query.keys()):
            builder = self.filters.get(param)
            if builder is None:
                continue  # unknown parameters are ignored (spec §6.4)
            for raw in getall(param):  # the same parameter twice is ANDed
                where.append(builder(split_values(raw)))
        order_by = list(self.default_order)
        if raw_order := query.get("order_by"):
            key = raw_order.lstrip("-")
            f = self.by_name.get(key)
            if f is None or not f.orderable:
                raise invalid(f"Cannot order by {key!r}", "order_by")
            order_by = [f.column.desc() if raw_order.startswith("-") else f.column.asc()]
        return ListQuery(
            limit=_non_negative(query, "limit", self.default_limit),
            offset=_non_negative(query, "offset", 0),
            where=where,
            order_by=order_by,
            fields=selected_fields(query),
        )

    # schema
    def schema(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "allowed_detail_http_methods": list(self.detail_methods),
            "allowed_list_http_methods": list(self.list_methods),
            "default_format": "application/json",
            "default_limit": self.default_limit,
            "fields": {f.name: self._field_schema(f) for f in self.fields},
        }
        filtering = {name: "exact" for name in self.filters}
        if filtering and self.dialect == "cloudsigma":  # Tastypie schemas here list no filtering
            doc["filtering"] = filtering
        ordering = [f.name for f in self.fields if f.orderable]
        if ordering and self.dialect == "cloudsigma":  # nor ordering (dumps/response_tags_schema)
            doc["ordering"] = ordering
        doc.update(self.schema_extra)
        return doc

    def _field_schema(self, f: Field) -> dict[str, Any]:
        schema_type = f.kind.schema_type
        default = f.default_value() if f.default is not MISSING else None
        if self.dialect == "tastypie":
            out: dict[str, Any] = {
                "blank": False,
                "default": default if f.default is not MISSING else NOT_PROVIDED,
                "help_text": f.help or _TASTYPIE_HELP.get(schema_type, ""),
                "nullable": f.nullable,
                "readonly": f.readonly,
                "type": schema_type,
                "unique": False,
            }
        else:
            out = {
                "default": default if (f.default is not MISSING or not f.readonly) else NOT_PROVIDED,
                "help_text": f.help,
                "readonly": f.readonly,
                "required": f.required,
                "type": schema_type,
            }
            if f.choices is not None:
                out["choices"] = list(f.choices)
            if isinstance(f.kind, Nested):
                out["fields"] = {n.name: self._field_schema(n) for n in f.kind.fields}
        out.update(f.schema)
        return out

