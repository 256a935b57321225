"""Rows for output, read below the ORM and below SQLAlchemy's execution (``orchestrator/db/reads.py``):
a model's columns and the related rows its rendering reads, as plain attributes.

A page, or one row, is one statement: each relationship is a column of its own, the related rows
aggregated in SQL into a JSON array per row (``json_group_array`` on SQLite, ``json_agg`` on
PostgreSQL), correlated on the row's key.  No query per object and none per relationship; the
arrays are decoded by msgspec straight into small structs (one per related table), whose
attributes the field tables' getters read as they read ORM objects.

The statements are built once per model (and per dialect) with their parameters as bind
parameters; a page's filters make a statement of their own, compiled for that request.

JSON columns a field shows as stored (``verbatim``: meta, requirements, ...) are read as their
text and handed to the encoder as ``msgspec.Raw``: neither decoded nor encoded again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import msgspec
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Integer,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    bindparam,
    cast,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by

from orchestrator.db.models import User
from orchestrator.db.reads import Reads


class RowView:
    """A row read for output: its columns, related rows and attached data as plain attributes."""

    def __init__(self, values: Any = ()) -> None:
        self.__dict__.update(values)


@dataclass(frozen=True)
class _Relation:
    key: str                     # attribute name on the row (``drive_links``)
    table: Table                 # the child table
    parent: str                  # the parent's key column name (``uuid``)
    child: str                   # the child's column naming its parent (``server_uuid``)
    order: tuple[str, ...]       # the relationship's order_by (else the primary key), child column names
    columns: tuple[str, ...]     # the child's columns read
    decoder: msgspec.json.Decoder[Any] = field(compare=False)  # the JSON array → list of structs


def _relation(attribute: Any) -> _Relation:
    prop = attribute.property
    ((local, remote),) = prop.local_remote_pairs
    table = prop.mapper.local_table
    for c in table.c:
        # The aggregate carries JSON's values: text and numbers come back as the column held them
        # (booleans would be 0/1 on SQLite, datetimes text); another type would need converting.
        assert isinstance(c.type, String | Integer), f"{table.name}.{c.key}: related columns are text or integers"
    order = tuple(c.key for c in (prop.order_by or ())) or tuple(c.key for c in table.primary_key)
    # array_like: the aggregate writes each row as an array, in column order
    columns = tuple(c.key for c in table.c if c.key != remote.key)  # not the parent's key again
    struct = msgspec.defstruct(f"{table.name}_row", [(k, Any) for k in columns], array_like=True)
    return _Relation(prop.key, table, local.key, remote.key, order, columns, msgspec.json.Decoder(list[struct]))


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)  # SQLite keeps no offset: the store's datetimes are UTC
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Rows:
    """How a model's rows are read for output: ``related`` are the relationships its field
    table reads (each a one-to-many on one key column); ``omit`` columns it never reads (not
    fetched, not converted: a datetime kept for ordering costs a parse per row on SQLite)."""

    model: Any
    related: tuple[Any, ...] = ()
    omit: tuple[str, ...] = ()
    verbatim: tuple[str, ...] = ()  # columns output as stored: JSON ones pass through as text
    relations: tuple[_Relation, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "relations", tuple(_relation(r) for r in self.related))

    @property
    def table(self) -> Table:
        return self.model.__table__  # type: ignore[no-any-return]

    @cached_property
    def _columns(self) -> list[Any]:
        # JSON as its text, on every store (asyncpg would decode json otherwise): decoded here, or not at all
        return [cast(c, Text).label(c.key) if isinstance(c.type, JSON) else c
                for c in self.table.c if c.key not in self.omit]

    def _aggregate(self, rel: _Relation, dialect: str) -> ColumnElement[Any]:
        """The related rows of the outer row as one JSON array of arrays, in the relationship's order."""
        child, parent = rel.table, self.table
        owned = child.c[rel.child] == parent.c[rel.parent]
        order = [child.c[k] for k in rel.order]
        if dialect == "postgresql":
            rows = func.json_agg(aggregate_order_by(func.json_build_array(*(child.c[k] for k in rel.columns)), *order))
            found = select(rows).where(owned).correlate(parent).scalar_subquery()
            return func.coalesce(cast(found, Text), "[]").label(rel.key)
        # SQLite (3.40) has no ORDER BY inside an aggregate: the rows come ordered from a subquery.
        ordered = select(*(child.c[k] for k in rel.columns)).where(owned).order_by(*order).correlate(parent).subquery()
        return select(func.json_group_array(func.json_array(*ordered.c))).scalar_subquery().label(rel.key)

    @cached_property
    def _selects(self) -> dict[str, Select[Any]]:
        """Per dialect: the columns and each relationship's aggregate (built once: building costs
        more than running)."""
        return {d: select(*self._columns, *(self._aggregate(r, d) for r in self.relations))
                for d in ("sqlite", "postgresql")}

    def _select(self, reads: Reads) -> Select[Any]:
        return self._selects[reads.dialect.name]

    @cached_property
    def _owned(self) -> dict[str, Select[Any]]:
        """Per dialect: one owner's row by uuid, with parameters (a constant statement: prepared).
        Read from the owner's user row, outer-joined: no row at all says the owner is disabled (or
        gone), a row without the object's columns that the object is not theirs; so the request
        needs no statement of its own to check its caller (``orchestrator/web/auth.py``)."""
        c, users = self.table.c, User.__table__
        mine = and_(c.owner_uuid == users.c.uuid, c.uuid == bindparam("uuid"))
        return {d: s.add_columns(users.c.uuid.label("caller"))
                .select_from(users.outerjoin(self.table, mine))
                .where(users.c.uuid == bindparam("owner"), users.c.disabled.is_(False))
                for d, s in self._selects.items()}

    def _converters(self, dialect: str) -> Callable[[Sequence[Any]], RowView]:
        """``driver row → RowView`` for this dialect, each column's value as the ORM would give it;
        generated as one dict display (as ``fields._dumper`` generates a view's dump): a 10,000-row
        list then runs no loop over the columns per row."""
        env: dict[str, Any] = {"RowView": RowView}
        items = []
        for i, c in enumerate(c for c in self.table.c if c.key not in self.omit):
            kind = c.type.impl if isinstance(c.type, TypeDecorator) else c.type
            if isinstance(kind, JSON):
                to: Callable[[Any], Any] | None = msgspec.Raw if c.key in self.verbatim else msgspec.json.decode
            elif dialect == "sqlite" and isinstance(kind, Boolean):
                to = bool
            elif dialect == "sqlite" and isinstance(kind, DateTime):
                to = _utc
            else:
                assert dialect != "sqlite" or isinstance(kind, String | Integer | BigInteger), \
                    f"{c}: a column type the reader does not convert"
                to = None
            if to is None:
                items.append(f"{c.key!r}: v[{i}]")
            else:
                env[f"to{i}"] = to
                items.append(f"{c.key!r}: to{i}(v[{i}])" if not c.nullable
                             else f"{c.key!r}: None if v[{i}] is None else to{i}(v[{i}])")
        start = len(self._columns)
        for j, r in enumerate(self.relations):
            env[f"rel{j}"] = r.decoder.decode
            items.append(f"{r.key!r}: rel{j}(v[{start + j}])")  # never null: [] for none
        # the source holds only column names, checked identifiers
        assert all(c.key.isidentifier() for c in self.table.c)
        exec(f"def view(v):\n    row = RowView()\n    row.__dict__.update({{{', '.join(items)}}})\n"
             "    return row\n", env)
        return env["view"]  # type: ignore[no-any-return]

    @cached_property
    def _views(self) -> dict[str, Callable[[Sequence[Any]], RowView]]:
        return {d: self._converters(d) for d in ("sqlite", "postgresql")}

    async def page(self, reads: Reads, where: Sequence[ColumnElement[bool]], order_by: Sequence[Any],
                   offset: int = 0, limit: int = 0) -> tuple[list[RowView], int]:
        """One page (``limit`` 0: every row from ``offset``) and the total count after ``where``."""
        stmt = self._select(reads).where(*where).order_by(*order_by).offset(offset)
        if limit:
            stmt = stmt.limit(limit)
        view = self._views[reads.dialect.name]
        rows = [view(values) for values in await reads.fetch(stmt)]
        if (rows or not offset) and (not limit or len(rows) < limit):
            total = offset + len(rows)  # the page reached the end
        else:  # a full page, or past the end: count
            (count,), = await reads.fetch(select(func.count()).select_from(self.table).where(*where))
            total = count or 0
        return rows, total

    async def owned(self, reads: Reads, owner: str, uuid: str) -> tuple[bool, RowView | None]:
        """Whether ``owner`` is an enabled user, and their row ``uuid`` with its related rows (None:
        not theirs), in one prepared statement."""
        found = await reads.fetch(self._owned[reads.dialect.name], {"owner": owner, "uuid": uuid}, prepared=True)
        if not found:
            return False, None
        values = found[0]  # the view reads the columns by position: the trailing ``caller`` is left
        return True, self._views[reads.dialect.name](values) if values[self._uuid] is not None else None

    @cached_property
    def _uuid(self) -> int:
        return [c.key for c in self._columns].index("uuid")

    async def one(self, reads: Reads, where: Sequence[ColumnElement[bool]]) -> RowView | None:
        """The first row matching ``where`` with its related rows."""
        found = await reads.fetch(self._select(reads).where(*where).limit(1))
        return self._views[reads.dialect.name](found[0]) if found else None
