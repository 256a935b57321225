"""Rows for output read with SQLAlchemy Core: a model's columns and the related rows its
rendering reads, without building ORM objects (the identity map, instance state and
relationship collections cost more than the query on a 1,000-row list).

A page is one query for the rows plus one per relationship, ``WHERE <foreign key> IN (<the
page's keys>)``, and a ``count(*)`` only when the page cannot tell the total (a full ``limit``);
one row is a single statement with the relationships outer-joined (as ``joinedload`` does).
The field tables read both through attribute access, as they read ORM rows, so a
:class:`RowView` is what they get.

JSON columns a field shows as stored (``verbatim``: meta, requirements, ...) are read as their
text and handed to the encoder as ``msgspec.Raw``: neither decoded nor encoded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import msgspec
from sqlalchemy import JSON, ColumnElement, Select, Table, Text, bindparam, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection


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
    order: tuple[str, ...]       # the relationship's order_by, child column names
    primary: tuple[str, ...]     # the child's primary key column names


def _relation(attribute: Any) -> _Relation:
    prop = attribute.property
    ((local, remote),) = prop.local_remote_pairs
    table = prop.mapper.local_table
    order = tuple(c.key for c in (prop.order_by or ()))
    return _Relation(prop.key, table, local.key, remote.key, order, tuple(c.key for c in table.primary_key))


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
    def columns(self) -> list[Any]:
        # the text itself: a cast in SQL (asyncpg's JSON codec would decode a mere type_coerce)
        return [cast(c, Text).label(c.key) if c.key in self.raw else c
                for c in self.table.c if c.key not in self.omit]

    @cached_property
    def raw(self) -> frozenset[str]:
        """The verbatim JSON columns: read as text, output as ``msgspec.Raw``."""
        return frozenset(c.key for c in self.table.c
                         if c.key in self.verbatim and c.key not in self.omit and isinstance(c.type, JSON))

    def _view(self, names: Sequence[str], values: Sequence[Any]) -> RowView:
        row = RowView(zip(names, values, strict=True))
        for key in self.raw:
            if (text := row.__dict__[key]) is not None:
                row.__dict__[key] = msgspec.Raw(text)
        return row

    async def page(self, conn: AsyncConnection, where: Sequence[ColumnElement[bool]], order_by: Sequence[Any],
                   offset: int = 0, limit: int = 0) -> tuple[list[RowView], int]:
        """One page (``limit`` 0: every row from ``offset``) and the total count after ``where``."""
        stmt: Select[Any] = select(*self.columns).where(*where).order_by(*order_by).offset(offset)
        if limit:
            stmt = stmt.limit(limit)
        result = await conn.execute(stmt)
        names = list(result.keys())
        rows = [self._view(names, values) for values in result.all()]
        if (rows or not offset) and (not limit or len(rows) < limit):
            total = offset + len(rows)  # the page reached the end
        else:  # a full page, or past the end: count
            total = await conn.scalar(select(func.count()).select_from(self.table).where(*where)) or 0
        if rows and self.relations:
            await self._attach(conn, rows, where, stmt if limit or offset else None)
        return rows, total

    async def _attach(self, conn: AsyncConnection, rows: list[RowView], where: Sequence[ColumnElement[bool]],
                      page: Select[Any] | None) -> None:
        """Each relationship's rows for the page: keyed by the page's rows (``page``: when it is
        not every row ``where`` selects), one query per relationship."""
        for rel in self.relations:
            parents = {getattr(row, rel.parent): row for row in rows}
            for row in rows:
                setattr(row, rel.key, [])
            parent = self.table.c[rel.parent]
            keys = (select(parent).where(*where) if page is None
                    else select(page.with_only_columns(parent).subquery()))
            child = rel.table.c[rel.child]
            result = await conn.execute(select(rel.table).where(child.in_(keys))
                                        .order_by(child, *(rel.table.c[k] for k in rel.order)))
            position = list(result.keys()).index(rel.child)
            for item in result.all():
                owner = parents.get(item[position])
                if owner is not None:
                    getattr(owner, rel.key).append(item)

    async def owned(self, conn: AsyncConnection, owner: str, uuid: str) -> RowView | None:
        """The owner's row ``uuid`` with its related rows, in one joined statement."""
        return await self.one(conn, self._owned, {"owner": owner, "uuid": uuid})

    async def one(self, conn: AsyncConnection, where: Sequence[ColumnElement[bool]] | Select[Any],
                  params: dict[str, Any] | None = None) -> RowView | None:
        """The first row matching ``where`` (or the statement :attr:`_owned` built) with its related rows."""
        stmt, parts = self._joined
        result = (await conn.execute(where if isinstance(where, Select) else stmt.where(*where), params)).all()
        if not result:
            return None
        (_, names, start, stop, _), *relations = parts
        row = self._view(names, result[0][start:stop])
        for key, names, start, stop, primary in relations:
            seen: dict[tuple[Any, ...], RowView] = {}
            for values in result:
                part = values[start:stop]
                pk = tuple(part[k] for k in primary)
                if pk not in seen and any(v is not None for v in pk):
                    seen[pk] = RowView(zip(names, part, strict=True))
            setattr(row, key, list(seen.values()))
        return row

    @cached_property
    def _owned(self) -> Select[Any]:
        """The joined statement for one owner's row by uuid, built once with parameters: building
        and keying a statement per request costs more than running it."""
        c = self.table.c
        return self._joined[0].where(c.owner_uuid == bindparam("owner"), c.uuid == bindparam("uuid"))

    @cached_property
    def _joined(self) -> tuple[Select[Any], list[tuple[str, list[str], int, int, list[int]]]]:
        """The row outer-joined to each relationship (built once: aliasing costs more than the
        query), and where each part's columns sit in a result row."""
        table = self.table
        joined: Any = table
        columns: list[Any] = list(self.columns)
        order: list[Any] = []
        parts = [("", [c.key for c in columns], 0, len(columns), [])]
        for i, rel in enumerate(self.relations):
            alias = rel.table.alias(f"r{i}")
            joined = joined.outerjoin(alias, alias.c[rel.child] == table.c[rel.parent])
            names = [c.key for c in alias.c]
            parts.append((rel.key, names, len(columns), len(columns) + len(names),
                          [names.index(k) for k in rel.primary]))
            columns += [c.label(f"r{i}_{c.key}") for c in alias.c]
            order += [alias.c[k] for k in rel.order or rel.primary]
        return select(*columns).select_from(joined).order_by(*order), parts
