"""Rows for output read with SQLAlchemy Core: a model's columns and the related rows its
rendering reads, without building ORM objects (the identity map, instance state and
relationship collections cost more than the query on a 1,000-row list).

A page is one query for the rows (the total rides along as ``count(*) OVER ()``) plus one per
relationship, ``WHERE <foreign key> IN (<the page's keys>)``; one row is a single statement
with the relationships outer-joined (as ``joinedload`` does).  The field tables read both
through attribute access, as they read ORM rows, so a :class:`RowView` is what they get.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, func, select
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
    relations: tuple[_Relation, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "relations", tuple(_relation(r) for r in self.related))

    @property
    def table(self) -> Table:
        return self.model.__table__  # type: ignore[no-any-return]

    @cached_property
    def columns(self) -> list[Any]:
        return [c for c in self.table.c if c.key not in self.omit]

    async def page(self, conn: AsyncConnection, where: Sequence[ColumnElement[bool]], order_by: Sequence[Any],
                   offset: int = 0, limit: int = 0) -> tuple[list[RowView], int]:
        """One page (``limit`` 0: every row from ``offset``) and the total count after ``where``."""
        table = self.table
        stmt: Select[Any] = select(*self.columns, func.count().over().label("_total")).where(*where)
        stmt = stmt.order_by(*order_by).offset(offset)
        if limit:
            stmt = stmt.limit(limit)
        result = await conn.execute(stmt)
        keys = list(result.keys())
        rows = [RowView(zip(keys, row, strict=True)) for row in result]
        if rows:
            total = rows[0]._total
        elif offset:  # past the end: the window saw no row to count
            total = await conn.scalar(select(func.count()).select_from(table).where(*where)) or 0
        else:
            total = 0
        if rows and self.relations:
            await self._attach(conn, rows, stmt)
        return rows, total

    async def _attach(self, conn: AsyncConnection, rows: list[RowView], page: Select[Any]) -> None:
        for rel in self.relations:
            parents = {getattr(row, rel.parent): row for row in rows}
            for row in rows:
                setattr(row, rel.key, [])
            keys = page.with_only_columns(self.table.c[rel.parent]).subquery()
            child = rel.table.c[rel.child]
            result = await conn.execute(select(rel.table).where(child.in_(select(keys)))
                                        .order_by(child, *(rel.table.c[k] for k in rel.order)))
            for item in result:
                owner = parents.get(getattr(item, rel.child))
                if owner is not None:
                    getattr(owner, rel.key).append(item)

    async def one(self, conn: AsyncConnection, where: Sequence[ColumnElement[bool]]) -> RowView | None:
        """The first row matching ``where`` with its related rows, in one joined statement."""
        stmt, parts = self._joined
        result = (await conn.execute(stmt.where(*where))).all()
        if not result:
            return None
        (_, names, start, stop, _), *relations = parts
        row = RowView(zip(names, result[0][start:stop], strict=True))
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
