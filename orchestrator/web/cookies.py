"""Cookie credentials (spec §3, §37): login sessions with a CSRF token, and the short-lived
``async_auth`` cookie that opens the notification WebSocket.

Kept in the API node's memory: a restart logs sessions out (clients log in again; Basic and
Bearer are unaffected), and with several API nodes a session is valid on the node that made it.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from cachetools import TTLCache

from orchestrator.domain.uris import API_ROOT

SESSION_AGE = 14 * 24 * 3600   # sessionid, as Django's default
CSRF_AGE = 365 * 24 * 3600     # csrftoken
ASYNC_AGE = 120                # async_auth (spec §3 item 4)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WEBSOCKET_PATHS = ("/websocket", f"{API_ROOT}/websocket", "/2.0/websocket")  # spec §9.3 names all three


MAX_ENTRIES = 100_000           # per map; the least recently used goes first beyond it


@dataclass
class Login:
    user: str
    csrf: str


class CookieStore:
    def __init__(self) -> None:
        self.sessions: TTLCache[str, Login] = TTLCache(maxsize=MAX_ENTRIES, ttl=SESSION_AGE)
        self.async_tokens: TTLCache[str, str] = TTLCache(maxsize=MAX_ENTRIES, ttl=ASYNC_AGE)  # token → user

    def login(self, user: str) -> tuple[str, Login]:
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = login = Login(user, secrets.token_urlsafe(32))
        return sid, login

    def logout(self, sid: str | None) -> None:
        self.sessions.pop(sid or "", None)

    def session(self, sid: str | None) -> Login | None:
        return self.sessions.get(sid or "")

    @staticmethod
    def csrf_ok(login: Login, method: str, header: str | None) -> bool:
        """Every request but GET/HEAD/OPTIONS carries ``X-CSRFToken`` equal to the session's token."""
        return method in SAFE_METHODS or (header is not None and hmac.compare_digest(header, login.csrf))

    def issue_async(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        self.async_tokens[token] = user
        return token

    def async_user(self, token: str | None) -> str | None:
        return self.async_tokens.get(token or "")

    def forget_users(self, users: set[str]) -> None:
        """Log these users out everywhere (they were disabled)."""
        for sid, login in list(self.sessions.items()):
            if login.user in users:
                self.sessions.pop(sid, None)
        for token, user in list(self.async_tokens.items()):
            if user in users:
                self.async_tokens.pop(token, None)
