"""Hypothesis strategies read from the API's declarative field tables (``orchestrator/api/fields.py``).

Every value kind (``Str``, ``Int``, ``Bool``, ``Meta``, ``StrList``, ``Ref``, ``RefList``, ``Nested``)
gets three families of values, chosen by the same walk that the server's validator makes:

* *valid*: what the kind and its bounds accept (references to the caller's own objects);
* *boundary*: the edges of those bounds and just beyond (max_length, max_length + 1, min - 1,
  2**63 - 1, 2**63, integers as text, integral floats);
* *hostile*: wrong types, NUL, lone surrogates, control characters, non-ASCII digits, huge
  numbers, other users' and unknown references, deep nesting.

A body is a table's fields (required ones mostly present) plus read-only and unknown keys, with at
most one field made hostile; the strategy returns the field it spoiled so the test can ask for an
``error_point``.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from orchestrator.api.fields import Bool, Field, Int, Meta, Nested, Output, Ref, RefList, Resource, Str, StrList
from orchestrator.api.profile import Decimal
from orchestrator.api.tags import AnyRefList
from orchestrator.domain.uris import API_ROOT

INT64 = 2**63
ODD_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "\r\n", "line\nbreak", "\t", "\x7f", "\u202e", "٠:١",
            "%", "_", "\\", "\\,", ",", "'; DROP TABLE servers; --", "../../etc/passwd", "<script>", "\ufeff",
            "\uffff", "😀" * 3, "x" * 1025, "y" * 5000, "null", "true", "0", "-1", "1e309", "NaN", "{}", "[]"]
ODD_NUMBERS = [0, -1, 1, 2**31, 2**53 + 1, INT64 - 1, INT64, -INT64, -INT64 - 1, 2**64, 10**30, 1.0, 1.5, -0.0, 1e20,
               1e308, "12", " 7 ", "+3", "-0", "١٢", "²", "0x10", "1_000", "9" * 40, True, False]
JUNK: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.sampled_from(ODD_NUMBERS), st.sampled_from(ODD_TEXT), st.just([]), st.just({}),
    st.just([None]), st.just({"uuid": None}), st.just([[[[]]]]), st.just({"a": {"b": {"c": {}}}}),
)


def _bounds(kind: Int) -> tuple[int, int]:
    low, high = getattr(kind, "minimum", None), getattr(kind, "maximum", None)  # None: unbounded (older tables)
    return (-INT64 if low is None else low), (INT64 - 1 if high is None else high)


def text(max_length: int | None = None, controls: bool = True) -> st.SearchStrategy[str]:
    limit = min(max_length or 64, 64)
    alphabet = st.characters(codec="utf-8", exclude_categories=() if controls else ("Cc",))
    return st.text(alphabet, max_size=limit)


@dataclass
class Pool:
    """Object ids the strategies refer to: the caller's own, another user's, none at all."""

    own: Callable[[str], str | None]   # collection → one of the caller's ids (or None)
    other: Callable[[str], str | None]  # collection → another user's id


def reference(collection: str, pool: Pool) -> st.SearchStrategy[Any]:
    """All three reference forms of spec §5.1, to the caller's, someone else's or no object."""

    def forms(uuid: str) -> st.SearchStrategy[Any]:
        return st.sampled_from([uuid, f"{API_ROOT}/{collection}/{uuid}/", {"uuid": uuid},
                                {"resource_uri": f"{API_ROOT}/{collection}/{uuid}/", "name": "x"},
                                uuid.upper(), f"{API_ROOT}/servers/{uuid}/", f" {uuid}"])

    ids = st.one_of(st.builds(lambda: pool.own(collection)), st.builds(lambda: pool.other(collection)),
                    st.uuids(version=4).map(str))
    return ids.flatmap(lambda u: forms(u) if u else st.just(str(uuidlib.uuid4())))


def valid(kind: Any, field: Field | None, pool: Pool) -> st.SearchStrategy[Any]:
    if field is not None and field.choices is not None:
        return st.sampled_from(field.choices)
    if isinstance(kind, Str):
        return text(kind.max_length, getattr(kind, "controls", True))
    if isinstance(kind, Int):
        low, high = _bounds(kind)
        low, high = max(low, -(2**40)), min(high, 2**42)
        return st.one_of(st.integers(max(low, 0), min(high, 10**4)), st.integers(low, high),
                         st.sampled_from([1000, 2000, 2**29, 2**30, 2**31]).filter(lambda v: low <= v <= high))
    if isinstance(kind, Bool):
        return st.booleans()
    if isinstance(kind, Meta):
        return st.dictionaries(text(32, controls=False), st.one_of(text(controls=False), st.integers(-5, 5),
                                                                   st.booleans()), max_size=4)
    if isinstance(kind, StrList):
        return st.lists(st.sampled_from(kind.choices) if kind.choices else text(16), max_size=3)
    if isinstance(kind, Ref):
        return reference(kind.collection, pool)
    if isinstance(kind, RefList):
        return st.lists(reference(kind.collection, pool), max_size=3)
    if isinstance(kind, Nested):
        one = object_of(kind.fields, pool, spoil=False, fair=True).map(lambda pair: pair[0])
        return st.lists(one, max_size=3) if kind.many else one
    if isinstance(kind, AnyRefList):  # a tag's resources: references to objects of any type
        taggable = st.sampled_from(["servers", "drives"]).flatmap(lambda c: reference(c, pool))
        return st.lists(taggable, max_size=3)
    if isinstance(kind, Decimal):
        return st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False),
                         st.decimals(0, 10**6, places=2, allow_nan=False).map(str))
    return JUNK


def boundary(kind: Any, field: Field | None) -> st.SearchStrategy[Any]:
    if isinstance(kind, Str):
        n = kind.max_length or 1024
        return st.sampled_from(["a" * n, "a" * (n + 1), "é" * n, "😀" * (n + 1), ""])
    if isinstance(kind, Int):
        low, high = _bounds(kind)
        edges = [low, low - 1, high, high + 1, str(low), float(min(max(low, -(2**53)), 2**53)), str(high + 1)]
        return st.sampled_from(edges)
    if isinstance(kind, Meta):
        return st.sampled_from([{"k" * 32: "v"}, {"k" * 33: "v"}, {"": ""}, {"k": "v" * 100_000}])
    if isinstance(kind, Nested) and kind.many:
        return st.just([{}] * 40)
    return JUNK


def hostile(kind: Any, field: Field | None, pool: Pool) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = [JUNK]
    if isinstance(kind, Str):
        options.append(st.sampled_from(ODD_TEXT))
    if isinstance(kind, Int):
        options.append(st.sampled_from(ODD_NUMBERS))
    if isinstance(kind, Meta):
        options.append(st.sampled_from([{"k": {"nested": "x"}}, {"k": ["x"]}, {"\ud800": "v"}, {"k": "\x00"},
                                        {"k": None}, {"k": 1e300}]))
    if isinstance(kind, Ref | RefList):
        bad = st.sampled_from(["", "not-a-uuid", f"{API_ROOT}/users/x/", "/etc/passwd", "\x00",
                               str(uuidlib.UUID(int=0)), {"uuid": 5}, {"resource_uri": None}, ["nested"]])
        options.append(st.lists(bad, min_size=1, max_size=2) if isinstance(kind, RefList) else bad)
    if isinstance(kind, Nested):
        inner = object_of(kind.fields, pool, spoil=True).map(lambda pair: pair[0])
        options.append(st.lists(inner, min_size=1, max_size=2) if kind.many else inner)
    if isinstance(kind, StrList):
        options.append(st.sampled_from([["x", 1], [None], ["\x00"], "a,b", [["x"]]]))
    return st.one_of(*options)


def field_value(f: Field, pool: Pool) -> st.SearchStrategy[Any]:
    return st.one_of(valid(f.kind, f, pool), valid(f.kind, f, pool), boundary(f.kind, f))


HAS_EDGES = (Str, Int, Meta)  # kinds with bounds; the others' edges are their valid values


def fair_value(f: Field, pool: Pool) -> st.SearchStrategy[Any]:
    """A value the field's kind accepts, or one at the edge of its bounds (just inside or just
    beyond): never a wrong type, so a refusal is about this field's value and names it."""
    edge = [boundary(f.kind, f)] if isinstance(f.kind, HAS_EDGES) and f.choices is None else []
    return st.one_of(valid(f.kind, f, pool), valid(f.kind, f, pool), *edge)


def write_body(fields: tuple[Field, ...], pool: Pool, *, seed: dict[str, Any] | None,
               ) -> st.SearchStrategy[tuple[dict[str, Any], list[str]]]:
    """(body, the fields drawn): an accepted body (``seed``; none for an edit) with one to three
    writable fields drawn by :func:`fair_value`, and now and then a read-only key (ignored)."""
    writable = [f for f in fields if not f.readonly and not isinstance(f.kind, Output)]
    readonly = [f for f in fields if f.readonly]

    @st.composite
    def build(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
        body: dict[str, Any] = dict(seed or {})
        chosen = draw(st.lists(st.sampled_from(writable), min_size=1, max_size=3, unique_by=lambda f: f.name))
        for f in chosen:
            body[f.name] = draw(fair_value(f, pool))
        if readonly and draw(st.integers(0, 4)) == 0:
            f = draw(st.sampled_from(readonly))
            body[f.name] = draw(valid(f.kind, f, pool))
        return body, [f.name for f in chosen]

    return build()


# Bodies known to be accepted, so that many generated requests get past validation into the store.
SEEDS: dict[str, dict[str, Any]] = {
    "servers": {"name": "fz", "cpu": 1000, "mem": 2**29, "vnc_password": "pw"},
    "drives": {"name": "fz", "size": 2**26, "media": "disk"},
    "tags": {"name": "fz"},
    "keypairs": {"name": "fz", "algorithm_type": "ed25519"},
}


def object_of(fields: tuple[Field, ...], pool: Pool, *, spoil: bool, create: bool = True,
              seed: dict[str, Any] | None = None, fair: bool = False,
              ) -> st.SearchStrategy[tuple[dict[str, Any], str | None]]:
    """(body, the field made hostile or None) from one field table; ``seed``: an accepted body that
    the generated fields then partly replace; ``fair``: values from :func:`fair_value` only."""
    value = fair_value if fair else field_value
    writable = [f for f in fields if not f.readonly and not isinstance(f.kind, Output)]
    readonly = [f for f in fields if f.readonly]

    @st.composite
    def build(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
        seeded = seed is not None and draw(st.booleans())
        body: dict[str, Any] = dict(seed) if seed is not None and seeded else {}
        for f in writable:
            wanted = draw(st.floats(0, 1)) < (0.9 if f.required and create and not seeded else 0.3)
            if wanted:
                body[f.name] = draw(value(f, pool))
        for f in readonly:  # ignored on input (spec §5.3)
            if draw(st.floats(0, 1)) < 0.1:
                body[f.name] = draw(valid(f.kind, f, pool) if fair else JUNK)
        if not fair and draw(st.floats(0, 1)) < 0.1:
            body[draw(text(12))] = draw(JUNK)  # unknown keys are ignored
        spoiled = None
        if spoil and writable and draw(st.booleans()):
            f = draw(st.sampled_from(writable))
            body[f.name] = draw(hostile(f.kind, f, pool))
            spoiled = f.name
        return body, spoiled

    return build()


def create_body(resource: Resource, pool: Pool) -> st.SearchStrategy[tuple[Any, str | None]]:
    """A create request in the three accepted shapes (spec §7.1); the spoiled point is prefixed."""
    one = object_of(resource.fields, pool, spoil=True, seed=SEEDS.get(resource.name))

    def shapes(pair: tuple[dict[str, Any], str | None]) -> st.SearchStrategy[tuple[Any, str | None]]:
        body, spoiled = pair
        return st.sampled_from([(body, spoiled), ({"objects": [body]}, spoiled and f"objects.0.{spoiled}"),
                                ([body], spoiled and f"objects.0.{spoiled}")])

    return one.flatmap(shapes)


def edit_body(resource: Resource, pool: Pool) -> st.SearchStrategy[tuple[Any, str | None]]:
    return object_of(resource.fields, pool, spoil=True, create=False)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False,
                      allow_infinity=False), text(16), st.sampled_from(ODD_TEXT))
ANY_JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(text(8), inner, max_size=3)), max_leaves=8)


# --- the bytes on the wire -----------------------------------------------------------------------

@dataclass
class Wire:
    raw: bytes | None
    headers: dict[str, str]
    clean: bool  # JSON sent as JSON: a 400 then is about a field, and names it


ENCODINGS = ["json"] * 12 + ["compact", "charset", "bom", "utf16", "truncated",
             "deep", "nan", "dupkeys", "gzip", "gzip-garbage", "deflate", "br", "text/plain", "form", "none-type"]


@st.composite
def wire(draw: st.DrawFn, body: Any) -> Wire:
    """``body`` as bytes and headers, mostly as clients send it, sometimes oddly."""
    import gzip
    import zlib

    how = draw(st.sampled_from(ENCODINGS))
    headers = {"Content-Type": "application/json"}
    try:
        raw = json.dumps(body).encode()
    except (TypeError, ValueError):
        raw = b"{}"
    clean = how in ("json", "compact", "charset", "gzip", "deflate")
    if how == "compact":
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        clean = "\\ud" not in json.dumps(body)  # surrogatepass bytes are not UTF-8
    elif how == "charset":
        headers["Content-Type"] = "application/json; charset=utf-8"
    elif how == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif how == "utf16":
        raw = raw.decode().encode("utf-16")
    elif how == "truncated":
        raw = raw[: max(1, len(raw) // 2)]
    elif how == "deep":
        depth = draw(st.sampled_from([33, 100, 1000, 5000]))
        raw = b'{"objects": ' + b"[" * depth + b"]" * depth + b"}"
    elif how == "nan":
        raw = raw.replace(b"1", b"NaN", 1) if b"1" in raw else b'{"cpu": Infinity, "size": 1e999}'
    elif how == "dupkeys":
        raw = b'{"name": "a", "name": {"x": 1}, ' + raw.lstrip(b"{") if raw.startswith(b"{") and raw != b"{}" else raw
    elif how == "gzip":
        raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
    elif how == "gzip-garbage":
        headers["Content-Encoding"] = "gzip"
    elif how == "deflate":
        raw, headers["Content-Encoding"] = zlib.compress(raw), "deflate"
    elif how == "br":
        headers["Content-Encoding"] = "br"
    elif how in ("text/plain", "form"):
        headers["Content-Type"] = "text/plain" if how == "text/plain" else "application/x-www-form-urlencoded"
    elif how == "none-type":
        del headers["Content-Type"]
    if draw(st.integers(0, 9)) == 0:
        clean = False  # odd headers answer for themselves (406, a parser's 400)
        headers["Accept"] = draw(st.sampled_from(["text/html", "application/xml", "*/*", "application/json;q=0.1",
                                                  "", "\x7f"]))
    if draw(st.integers(0, 19)) == 0:
        clean = False
        headers[draw(st.sampled_from(["X-CSRFToken", "Cookie", "Range", "X-Forwarded-For", "Origin"]))] = \
            draw(st.sampled_from(["sessionid=junk", "bytes=5-1", "bytes=-0", "x" * 300, "null", "\u00ff"]))
    return Wire(raw, headers, clean)


def query_values(resource: Resource | None) -> st.SearchStrategy[dict[str, str]]:
    """Query parameters: the table's filters, paging, field selection, ordering, with odd values."""
    names = ["limit", "offset", "fields", "order_by", "recurse", "avoid", "format"]
    if resource is not None:
        names += sorted(resource.filters)
    values = st.one_of(st.sampled_from(["0", "1", "20", "-1", "abc", "", str(INT64), "9" * 40, "²", "١", "1e3",
                                        "name", "-name", "uuid", "%", "_", "a,b", "a\\,b", "\\", "all_drives",
                                        "disks", "\x00"]), text(12), st.uuids().map(str))
    return st.dictionaries(st.sampled_from(names), values, max_size=3)
