"""The one relation behind ``resource.tags`` and ``tag.resources`` (spec §29)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Tag, TagLink
from orchestrator.domain.errors import invalid


@dataclass
class TagLookup:
    """The owner's tags among some named ones and each one's next link position, looked up once
    for many new resources (a bulk create); positions advance as links are added."""

    found: set[str] = field(default_factory=set)
    positions: dict[str, int] = field(default_factory=dict)

    @classmethod
    async def load(cls, s: AsyncSession, tag_uuids: list[str], owner: str) -> TagLookup:
        wanted = list(dict.fromkeys(tag_uuids))
        if not wanted:
            return cls()
        found = set((await s.scalars(select(Tag.uuid).where(Tag.uuid.in_(wanted), Tag.owner_uuid == owner))).all())
        # Each new link goes last in its tag's list: one query for every tag's highest position.
        last = dict((await s.execute(select(TagLink.tag_uuid, func.max(TagLink.position))
                                     .where(TagLink.tag_uuid.in_(wanted)).group_by(TagLink.tag_uuid))).all())
        return cls(found, {tag: last.get(tag, -1) + 1 for tag in wanted})


async def set_resource_tags(s: AsyncSession, res_type: str, res_uuid: str, tag_uuids: list[str], owner: str,
                            *, new: bool = False, known: TagLookup | None = None) -> None:
    """Replace the tags of one resource; every tag must belong to ``owner``.  ``new``: the
    resource was just created, so it has no links to drop; ``known``: the lookups made for a
    bulk create (then the links are flushed with the rest)."""
    wanted = list(dict.fromkeys(tag_uuids))
    lookup = known if known is not None else await TagLookup.load(s, wanted, owner)
    for i, tag in enumerate(tag_uuids):
        if tag not in lookup.found:
            raise invalid(f"Tag {tag} does not exist", f"tags.{i}")
    if not new:
        await s.execute(delete(TagLink).where(TagLink.res_uuid == res_uuid))
    if not wanted:
        return
    links = []
    for tag in wanted:
        links.append(TagLink(tag_uuid=tag, res_uuid=res_uuid, res_type=res_type, position=lookup.positions[tag]))
        lookup.positions[tag] += 1
    s.add_all(links)
    if known is None:
        await s.flush()


async def forget_resources(s: AsyncSession, res_uuids: list[str]) -> None:
    """Deleted resources leave every tag."""
    await s.execute(delete(TagLink).where(TagLink.res_uuid.in_(res_uuids)))
