"""Cookie credentials (spec §3, §37): login sessions with a CSRF token, and the short-lived
``async_auth`` cookie that opens the notification WebSocket.

Kept in the database (``web_sessions``, ``one_time_tokens``), hashed: a session made through one API
node is valid on every other and survives a restart; logout ends it everywhere at once.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from orchestrator.db.models import WebSession, utcnow
from orchestrator.domain import tokens
from orchestrator.domain.uris import API_ROOT

SESSION_AGE = 14 * 24 * 3600   # sessionid, as Django's default
CSRF_AGE = 365 * 24 * 3600     # csrftoken
ASYNC_AGE = 120                # async_auth (spec §3 item 4)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WEBSOCKET_PATHS = ("/websocket", f"{API_ROOT}/websocket", "/2.0/websocket")  # spec §9.3 names all three


@dataclass
class Login:
    user: str
    csrf: str


class CookieStore:
    def __init__(self, sessions: async_sessionmaker) -> None:
        self.sessions = sessions

    async def login(self, user: str) -> tuple[str, Login]:
        sid, login = secrets.token_urlsafe(32), Login(user, secrets.token_urlsafe(32))
        async with self.sessions.begin() as s:
            s.add(WebSession(sid_hash=tokens.digest(sid), user_uuid=user, csrf=login.csrf,
                             expires=utcnow() + timedelta(seconds=SESSION_AGE)))
        return sid, login

    async def logout(self, sid: str | None) -> None:
        if sid:
            async with self.sessions.begin() as s:
                await s.execute(delete(WebSession).where(WebSession.sid_hash == tokens.digest(sid)))

    async def session(self, sid: str | None) -> Login | None:
        if not sid:
            return None
        async with self.sessions() as s:
            row = (await s.execute(select(WebSession.user_uuid, WebSession.csrf).where(
                WebSession.sid_hash == tokens.digest(sid), WebSession.expires > utcnow()))).first()
        return None if row is None else Login(row.user_uuid, row.csrf)

    @staticmethod
    def csrf_ok(login: Login, method: str, header: str | None) -> bool:
        """Every request but GET/HEAD/OPTIONS carries ``X-CSRFToken`` equal to the session's token."""
        return method in SAFE_METHODS or (header is not None and hmac.compare_digest(header, login.csrf))

    async def issue_async(self, user: str) -> str:
        async with self.sessions.begin() as s:
            return await tokens.issue(s, "async_auth", user, ASYNC_AGE, nbytes=32)

    async def async_user(self, token: str | None) -> str | None:
        if not token:
            return None
        async with self.sessions() as s:
            row = await tokens.look(s, "async_auth", token)
        return None if row is None else row.subject

    async def forget_users(self, users: set[str]) -> None:
        """Log these users out everywhere (they were disabled)."""
        async with self.sessions.begin() as s:
            await s.execute(delete(WebSession).where(WebSession.user_uuid.in_(users)))
            for user in users:
                await tokens.revoke(s, "async_auth", user)
