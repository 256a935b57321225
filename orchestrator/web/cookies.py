"""Cookie credentials (spec §3, §37): login sessions with a CSRF token, and the short-lived
``async_auth`` cookie that opens the notification WebSocket.

Kept in the API node's memory: a restart logs sessions out (clients log in again; Basic and
Bearer are unaffected), and with several API nodes a session is valid on the node that made it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

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
    expires: float


class CookieStore:
    def __init__(self) -> None:
        self.sessions: dict[str, Login] = {}
        self.async_tokens: dict[str, tuple[str, float]] = {}

    def login(self, user: str) -> tuple[str, Login]:
        self._expire()
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = login = Login(user, secrets.token_urlsafe(32), time.time() + SESSION_AGE)
        return sid, login

    def logout(self, sid: str | None) -> None:
        self.sessions.pop(sid or "", None)

    def session(self, sid: str | None) -> Login | None:
        login = self.sessions.get(sid or "")
        return login if login is not None and login.expires > time.time() else None

    @staticmethod
    def csrf_ok(login: Login, method: str, header: str | None) -> bool:
        """Every request but GET/HEAD/OPTIONS carries ``X-CSRFToken`` equal to the session's token."""
        return method in SAFE_METHODS or (header is not None and hmac.compare_digest(header, login.csrf))

    def issue_async(self, user: str) -> str:
        self._expire()
        token = secrets.token_urlsafe(32)
        self.async_tokens[token] = (user, time.time() + ASYNC_AGE)
        return token

    def async_user(self, token: str | None) -> str | None:
        user, expires = self.async_tokens.get(token or "", (None, 0.0))
        return user if expires > time.time() else None

    def _expire(self) -> None:
        now = time.time()
        for sid in [sid for sid, login in self.sessions.items() if login.expires <= now]:
            del self.sessions[sid]
        for token in [t for t, (_, expires) in self.async_tokens.items() if expires <= now]:
            del self.async_tokens[token]
