"""The one relation behind ``resource.tags`` and ``tag.resources`` (spec §29)."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Tag, TagLink
from orchestrator.domain.errors import invalid


async def set_resource_tags(s: AsyncSession, res_type: str, res_uuid: str, tag_uuids: list[str], owner: str,
                            *, new: bool = False) -> None:
    """Replace the tags of one resource; every tag must belong to ``owner``.  ``new``: the
    resource was just created, so it has no links to drop."""
    wanted = list(dict.fromkeys(tag_uuids))
    found = set((await s.scalars(select(Tag.uuid).where(Tag.uuid.in_(wanted), Tag.owner_uuid == owner))).all()) \
        if wanted else set()
    for i, tag in enumerate(tag_uuids):
        if tag not in found:
            raise invalid(f"Tag {tag} does not exist", f"tags.{i}")
    if not new:
        await s.execute(delete(TagLink).where(TagLink.res_uuid == res_uuid))
    if not wanted:
        return
    # Each new link goes last in its tag's list: one query for every tag's highest position.
    last = dict((await s.execute(select(TagLink.tag_uuid, func.max(TagLink.position))
                                 .where(TagLink.tag_uuid.in_(wanted)).group_by(TagLink.tag_uuid))).all())
    s.add_all(TagLink(tag_uuid=tag, res_uuid=res_uuid, res_type=res_type, position=last.get(tag, -1) + 1)
              for tag in wanted)
    await s.flush()


async def forget_resources(s: AsyncSession, res_uuids: list[str]) -> None:
    """Deleted resources leave every tag."""
    await s.execute(delete(TagLink).where(TagLink.res_uuid.in_(res_uuids)))
