"""Users, passwords and the authentication middleware (spec §3).

Passwords are stored with Argon2id (argon2-cffi: memory-hard, salted; older scrypt hashes still
verify).  An unknown e-mail costs the same Argon2 verification as a wrong password, so timing tells
nothing; failed attempts are counted per e-mail and per client address, and beyond a few a client
waits (429 with ``Retry-After``, doubling up to 15 minutes) even for the right password.  Basic auth
sends the password with every request, so a verified (email, password) pair is
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
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cachetools import TTLCache
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from orchestrator.db.models import ApiToken, User
from orchestrator.db.reads import Reads
from orchestrator.domain.errors import DomainError, Kind, forbidden
from orchestrator.web.cookies import CookieStore
from orchestrator.web.errors import HttpError
from orchestrator.web.keys import AUTH, CONFIG, COOKIES, USER

CHALLENGE = {"WWW-Authenticate": 'Basic realm="users"'}
HASHER = PasswordHasher()  # Argon2id, RFC 9106's second recommended profile (64 MiB, t=3, p=4)
# Verified against when the e-mail is unknown: the same work as a wrong password.
DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def check_password(password: str, stored: str) -> bool:
    if stored.startswith("scrypt$"):  # users made before Argon2
        try:
            _, n, r, p, salt, digest = stored.split("$")
            candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
        except ValueError:
            return False
        return hmac.compare_digest(candidate.hex(), digest)
    try:
        return HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


class Throttle:
    """Failed password attempts per key (an e-mail, an address); past ``free`` of them within the
    window the key waits ``2**(n - free)`` seconds, at most ``longest``, from its last failure."""

    def __init__(self, free: int, window: float = 900.0, longest: float = 900.0, size: int = 100_000) -> None:
        self.free, self.longest = free, longest
        self._failures: TTLCache[str, tuple[int, float]] = TTLCache(maxsize=size, ttl=window)

    def wait(self, key: str) -> float:
        count, last = self._failures.get(key, (0, 0.0))
        if count < self.free:
            return 0.0
        return max(0.0, last + min(2.0 ** (count - self.free), self.longest) - time.monotonic())

    def failed(self, key: str) -> None:
        count, _ = self._failures.get(key, (0, 0.0))
        self._failures[key] = (count + 1, time.monotonic())

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)


def throttled(seconds: float) -> DomainError:
    wait = max(1, math.ceil(seconds))
    return HttpError(Kind.THROTTLED, f"Too many failed logins; retry in {wait} s", {"Retry-After": str(wait)})


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


WRONG = "Wrong e-mail or password"


class CallerDisabled(HttpError):
    """Raised by a read that confirms its caller (:func:`confirms_caller`) and found the caller
    disabled or gone: the middleware answers as it answers a wrong credential."""

    def __init__(self) -> None:
        super().__init__(Kind.UNAUTHENTICATED, WRONG, CHALLENGE)


ENABLED = select(User.uuid).where(User.uuid == bindparam("user"), User.disabled.is_(False))


class Authenticator:
    """Resolves a request's credentials to a user uuid."""

    def __init__(self, sessions: async_sessionmaker, reads: Reads, ttl: float = 60.0, size: int = 10_000) -> None:
        self._sessions, self._reads = sessions, reads
        self._key = secrets.token_bytes(32)
        self._cache: TTLCache[str, str] = TTLCache(maxsize=size, ttl=ttl)  # HMAC of the pair → user uuid
        self.per_user, self.per_address = Throttle(free=10), Throttle(free=100)
        # Checks under way, by the same key: a client opening 32 connections at once costs one scrypt.
        self._checking: dict[str, asyncio.Task[str]] = {}

    async def user_for(self, authorization: str | None, remote: str | None = None, *, confirmed: bool = False) -> str:
        """``confirmed``: the handler's own read confirms the user is enabled (it raises
        :class:`CallerDisabled` otherwise), so a remembered credential costs no statement here."""
        if not authorization:
            raise unauthorized()
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            return await self._basic(value.strip(), remote, confirmed)
        if scheme.lower() == "bearer":
            return await self._bearer(value.strip())
        raise unauthorized("Unsupported authorization scheme")

    @staticmethod
    def _pair(value: str) -> tuple[str, str]:
        try:
            email, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized("Malformed Basic credentials") from None
        if not sep:
            raise unauthorized("Malformed Basic credentials")
        return email, password

    async def _basic(self, value: str, remote: str | None, confirmed: bool) -> str:
        return await self.verify(*self._pair(value), remote, confirmed=confirmed)

    def _cache_key(self, email: str, password: str) -> str:
        return hmac.new(self._key, f"{email}\x00{password}".encode("utf-8", "replace"), "sha256").hexdigest()

    def forget(self, authorization: str) -> None:
        """Drop a remembered Basic credential (its user was found disabled)."""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            self._cache.pop(self._cache_key(*self._pair(value.strip())), None)

    async def verify(self, email: str, password: str, remote: str | None = None, *, confirmed: bool = False) -> str:
        """The user uuid for an e-mail and password (Basic auth, session login)."""
        cache_key = self._cache_key(email, password)
        cached = self._cache.get(cache_key)
        if cached is not None:
            if confirmed or await self.enabled(cached):
                return cached
            # Disabled since: the full check below refuses it, with the work of a wrong password.
            self._cache.pop(cache_key, None)
        user_key, address_key = email.casefold()[:320], remote or "?"
        wait = max(self.per_user.wait(user_key), self.per_address.wait(address_key))
        if wait > 0:
            raise throttled(wait)
        task = self._checking.get(cache_key)
        if task is None:
            task = asyncio.ensure_future(self._check(email, password, cache_key, user_key, address_key))
            self._checking[cache_key] = task
            task.add_done_callback(lambda t: (self._checking.pop(cache_key, None),
                                              t.cancelled() or t.exception()))
        return await asyncio.shield(task)

    async def _check(self, email: str, password: str, cache_key: str, user_key: str, address_key: str) -> str:
        """One check of a credential, shared by the requests that carry it at the same moment."""
        row = None
        try:
            email.encode("utf-8")
        except UnicodeEncodeError:
            pass  # no such user can exist (and the database could not take the text)
        else:
            async with self._sessions() as session:
                row = (await session.execute(select(User.uuid, User.password_hash, User.disabled)
                                             .where(User.email == email))).first()
        # Argon2 takes tens of milliseconds and 64 MiB: off the event loop, and for unknown users too.
        stored = row.password_hash if row is not None else DUMMY_HASH
        matches = await asyncio.to_thread(check_password, password.encode("utf-8", "replace").decode(), stored)
        # A disabled user is told exactly what a wrong password hears, after the same work.
        if row is None or not matches or row.disabled:
            self.per_user.failed(user_key)
            self.per_address.failed(address_key)
            raise unauthorized(WRONG)
        self.per_user.forget(user_key)
        self._cache[cache_key] = row.uuid
        return row.uuid

    async def enabled(self, user: str) -> bool:
        """The user exists and is not disabled: read from the store on every use of a remembered
        credential (sessions, cookies, console tokens, cached Basic pairs), so ``strato users
        disable`` takes effect on the next request.  The flag is set by another process (the
        command line), which no cache here would hear of: one prepared statement on the
        driver's connection, a few microseconds, instead."""
        return bool(await self._reads.fetch(ENABLED, {"user": user}, prepared=True))

    async def _bearer(self, token: str) -> str:
        async with self._sessions() as session:
            user = await session.scalar(select(ApiToken.user_uuid).join(User, User.uuid == ApiToken.user_uuid).where(
                ApiToken.token_hash == hash_token(token), User.disabled.is_(False)))
        if user is None:
            raise unauthorized("Unknown API token")
        return user


def check_origin(request: web.Request) -> None:
    """WebSockets are exempt from the same-origin policy, and a browser sends its cookies along:
    one opened by a page of another site (its ``Origin``) is refused.  Allowed: this node as the
    client reached it, the configured front end and ``allowed_origins``; no Origin (not a browser)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    config = request.app[CONFIG]
    allowed = {f"{request.scheme}://{request.host}", *config.allowed_origins}
    if config.frontend_url:
        scheme, _, rest = config.frontend_url.partition("://")
        allowed.add(f"{scheme}://{rest.split('/', 1)[0]}")
    if origin not in allowed:
        raise forbidden(f"Origin {origin[:100]!r} may not open this WebSocket")


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


def confirms_caller(handler: H) -> H:
    """Declare that a handler's read confirms its caller is enabled, in the same statement
    (``Rows.owned``), raising :class:`CallerDisabled` when not: a remembered Basic credential then
    costs no statement of its own.  "Disabled is refused at the next request" still holds."""
    handler.confirms_caller = True  # type: ignore[attr-defined]
    return handler


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy = getattr(request.match_info.handler, "auth_policy", "user")
    if callable(policy):
        policy = policy(request)
    if policy == "public":
        return await handler(request)
    if policy == "async_auth":
        user = await request.app[COOKIES].async_user(request.cookies.get("async_auth"))
        if user is None or not await request.app[AUTH].enabled(user):
            raise unauthorized("A fresh async_auth cookie is required (do=authenticate_asynchronous)")
        request[USER] = user
        return await handler(request)
    login = None if "Authorization" in request.headers else await request.app[COOKIES].session(
        request.cookies.get("sessionid"))
    if login is not None and not await request.app[AUTH].enabled(login.user):
        await request.app[COOKIES].logout(request.cookies.get("sessionid"))
        raise unauthorized()
    if login is not None:  # session cookie (spec §3 item 3): writes need the CSRF token too
        if not CookieStore.csrf_ok(login, request.method, request.headers.get("X-CSRFToken")):
            raise forbidden("CSRF token missing or incorrect (X-CSRFToken header)")
        request[USER] = login.user
        return await handler(request)
    auth, authorization = request.app[AUTH], request.headers.get("Authorization")
    confirms = getattr(request.match_info.handler, "confirms_caller", False)
    request[USER] = await auth.user_for(authorization, request.remote, confirmed=confirms)
    if not confirms:
        return await handler(request)
    try:
        return await handler(request)
    except CallerDisabled:
        # Remembered, but disabled since: the full check, which refuses it after a wrong
        # credential's work and with its answer (or, enabled again meanwhile, lets it through).
        assert authorization is not None
        auth.forget(authorization)
        request[USER] = await auth.user_for(authorization, request.remote)
        return await handler(request)
