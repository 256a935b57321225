"""Users, passwords and the authentication middleware (spec §3).

Passwords are stored with scrypt (slow, salted).  Basic auth sends the
password with every request, so a verified (email, password) pair is
remembered for a minute under an HMAC keyed with a per-process secret: the
cache never holds a reusable credential, and a password changed from the
command line takes effect within that minute.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from aiohttp import web
from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from orchestrator.db.models import ApiToken, User
from orchestrator.domain.errors import DomainError, Kind, forbidden
from orchestrator.web.cookies import CookieStore
from orchestrator.web.errors import HttpError
from orchestrator.web.keys import AUTH, COOKIES, USER

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
CHALLENGE = {"WWW-Authenticate": 'Basic realm="users"'}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits: a fast hash is enough to keep the database copy useless.
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "strato_" + secrets.token_urlsafe(32)


async def create_user(session: AsyncSession, email: str, password: str) -> User:
    user = User(email=email, password_hash=hash_password(password))
    session.add(user)
    await session.flush()
    return user


async def create_token(session: AsyncSession, user: User) -> str:
    token = new_token()
    session.add(ApiToken(token_hash=hash_token(token), user_uuid=user.uuid))
    await session.flush()
    return token


def unauthorized(message: str = "Authentication required") -> DomainError:
    return HttpError(Kind.UNAUTHENTICATED, message, CHALLENGE)


class Authenticator:
    """Resolves a request's credentials to a user uuid."""

    def __init__(self, sessions: async_sessionmaker, ttl: float = 60.0, size: int = 10_000) -> None:
        self._sessions = sessions
        self._key = secrets.token_bytes(32)
        self._cache: TTLCache[str, str] = TTLCache(maxsize=size, ttl=ttl)  # HMAC of the pair → user uuid
        # Checks under way, by the same key: a client opening 32 connections at once costs one scrypt.
        self._checking: dict[str, asyncio.Task[str]] = {}

    async def user_for(self, authorization: str | None) -> str:
        if not authorization:
            raise unauthorized()
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            return await self._basic(value.strip())
        if scheme.lower() == "bearer":
            return await self._bearer(value.strip())
        raise unauthorized("Unsupported authorization scheme")

    async def _basic(self, value: str) -> str:
        try:
            email, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized("Malformed Basic credentials") from None
        if not sep:
            raise unauthorized("Malformed Basic credentials")
        return await self.verify(email, password)

    async def verify(self, email: str, password: str) -> str:
        """The user uuid for an e-mail and password (Basic auth, session login)."""
        cache_key = hmac.new(self._key, f"{email}\x00{password}".encode(), "sha256").hexdigest()
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        task = self._checking.get(cache_key)
        if task is None:
            task = asyncio.ensure_future(self._check(email, password, cache_key))
            self._checking[cache_key] = task
            task.add_done_callback(lambda t: (self._checking.pop(cache_key, None),
                                              t.cancelled() or t.exception()))
        return await asyncio.shield(task)

    async def _check(self, email: str, password: str, cache_key: str) -> str:
        async with self._sessions() as session:
            row = (await session.execute(select(User.uuid, User.password_hash).where(User.email == email))).first()
        # scrypt takes tens of milliseconds: keep it off the event loop.
        if row is None or not await asyncio.to_thread(check_password, password, row.password_hash):
            raise unauthorized("Wrong e-mail or password")
        self._cache[cache_key] = row.uuid
        return row.uuid

    async def _bearer(self, token: str) -> str:
        async with self._sessions() as session:
            user = await session.scalar(select(ApiToken.user_uuid).where(ApiToken.token_hash == hash_token(token)))
        if user is None:
            raise unauthorized("Unknown API token")
        return user


Policy = Literal["user", "public", "async_auth"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H")


def auth_policy(policy: Policy | Callable[[web.Request], Policy]) -> Callable[[H], H]:
    """Declare on a route's handler how its caller is known (default ``user``: Basic, Bearer or
    a session cookie).  ``public`` routes check a credential of their own (a one-time link, a
    console token, the login body); ``async_auth`` takes only that cookie (spec §3 item 4)."""

    def mark(handler: H) -> H:
        handler.auth_policy = policy  # type: ignore[attr-defined]
        return handler

    return mark


public = auth_policy("public")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy = getattr(request.match_info.handler, "auth_policy", "user")
    if callable(policy):
        policy = policy(request)
    if policy == "public":
        return await handler(request)
    if policy == "async_auth":
        user = request.app[COOKIES].async_user(request.cookies.get("async_auth"))
        if user is None:
            raise unauthorized("A fresh async_auth cookie is required (do=authenticate_asynchronous)")
        request[USER] = user
        return await handler(request)
    login = None if "Authorization" in request.headers else request.app[COOKIES].session(
        request.cookies.get("sessionid"))
    if login is not None:  # session cookie (spec §3 item 3): writes need the CSRF token too
        if not CookieStore.csrf_ok(login, request.method, request.headers.get("X-CSRFToken")):
            raise forbidden("CSRF token missing or incorrect (X-CSRFToken header)")
        request[USER] = login.user
        return await handler(request)
    request[USER] = await request.app[AUTH].user_for(request.headers.get("Authorization"))
    return await handler(request)
