"""The one relation behind ``resource.tags`` and ``tag.resources`` (spec §29)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Tag, TagLink
from orchestrator.domain.errors import invalid


async def set_resource_tags(s: AsyncSession, res_type: str, res_uuid: str, tag_uuids: list[str], owner: str) -> None:
    """Replace the tags of one resource; every tag must belong to ``owner``."""
    found = set((await s.scalars(select(Tag.uuid).where(Tag.uuid.in_(tag_uuids), Tag.owner_uuid == owner))).all())
    for i, tag in enumerate(tag_uuids):
        if tag not in found:
            raise invalid(f"Tag {tag} does not exist", f"tags.{i}")
    await s.execute(delete(TagLink).where(TagLink.res_uuid == res_uuid))
    for tag in dict.fromkeys(tag_uuids):
        position = await _next_position(s, tag)
        s.add(TagLink(tag_uuid=tag, res_uuid=res_uuid, res_type=res_type, position=position))
    await s.flush()


async def _next_position(s: AsyncSession, tag_uuid: str) -> int:
    positions = (await s.scalars(select(TagLink.position).where(TagLink.tag_uuid == tag_uuid))).all()
    return max(positions, default=-1) + 1


async def forget_resources(s: AsyncSession, res_uuids: list[str]) -> None:
    """Deleted resources leave every tag."""
    await s.execute(delete(TagLink).where(TagLink.res_uuid.in_(res_uuids)))
