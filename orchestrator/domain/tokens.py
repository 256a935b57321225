"""Secrets the API hands out, kept in the database so that any API node honours what another made:
one-time or short-lived tokens (``async_auth`` cookies, browser console tokens, chunk upload links)
and cookie login sessions.  Only SHA-256 digests are stored; every expiry is part of the query that
reads the row, so an expired secret is refused before the sweep removes it."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import OneTimeToken, WebSession, utcnow


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


async def issue(s: AsyncSession, kind: str, subject: str, ttl: float, data: dict[str, Any] | None = None,
                nbytes: int = 24) -> str:
    token = secrets.token_urlsafe(nbytes)
    s.add(OneTimeToken(token_hash=digest(token), kind=kind, subject=subject, data=data or {},
                       expires=utcnow() + timedelta(seconds=ttl)))
    await s.flush()
    return token


async def look(s: AsyncSession, kind: str, token: str) -> OneTimeToken | None:
    """The unexpired token (it stays valid)."""
    return await s.scalar(select(OneTimeToken).where(
        OneTimeToken.token_hash == digest(token), OneTimeToken.kind == kind, OneTimeToken.expires > utcnow()))


async def redeem(s: AsyncSession, kind: str, token: str) -> OneTimeToken | None:
    """The unexpired token, used up: of two nodes redeeming it at once, one gets it."""
    row = (await s.execute(delete(OneTimeToken).where(
        OneTimeToken.token_hash == digest(token), OneTimeToken.kind == kind, OneTimeToken.expires > utcnow())
        .returning(OneTimeToken.subject, OneTimeToken.data))).first()
    return None if row is None else OneTimeToken(subject=row.subject, data=row.data, kind=kind)


async def live(s: AsyncSession, kind: str, subject: str | None = None) -> list[OneTimeToken]:
    """The unexpired tokens of a kind (about one subject), oldest first."""
    stmt = select(OneTimeToken).where(OneTimeToken.kind == kind, OneTimeToken.expires > utcnow())
    if subject is not None:
        stmt = stmt.where(OneTimeToken.subject == subject)
    return list((await s.scalars(stmt.order_by(OneTimeToken.created))).all())


async def revoke(s: AsyncSession, kind: str, subject: str) -> None:
    await s.execute(delete(OneTimeToken).where(OneTimeToken.kind == kind, OneTimeToken.subject == subject))


async def revoke_hashes(s: AsyncSession, hashes: list[str]) -> None:
    if hashes:
        await s.execute(delete(OneTimeToken).where(OneTimeToken.token_hash.in_(hashes)))


async def sweep(s: AsyncSession) -> None:
    """Remove what expired (it is refused already; this only keeps the tables small)."""
    now = utcnow()
    await s.execute(delete(OneTimeToken).where(OneTimeToken.expires <= now))
    await s.execute(delete(WebSession).where(WebSession.expires <= now))
