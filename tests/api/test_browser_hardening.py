"""Issue 16 item 9: what a browser could be made to do by another site's page — JSON bodies must say
they are JSON (415 otherwise), the notification WebSocket checks Origin, the async_auth cookie
stays out of scripts' reach."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.api.conftest import assert_error, server_body, uuids
from tests.strato_process import Api

SIMPLE_TYPES = ["text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x", "application/octet-stream", "text/html", None]


@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
@pytest.mark.parametrize(("method", "path", "collection"), [
    ("POST", "servers/", "servers"), ("POST", "tags/", "tags"), ("POST", "drives/", "drives"),
    ("DELETE", "servers/", "servers"),
])
def test_json_in_another_content_type_is_refused(alice: Api, content_type: str | None, method: str, path: str,
                                                 collection: str) -> None:
    before = uuids(alice, collection)
    body = json.dumps({"objects": [server_body(name="csrf", size=2**30, media="disk")]}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    r = alice.session.request(method, alice.url(path), data=body, auth=alice.auth, headers=headers, timeout=30)
    assert_error(r, 415)
    assert uuids(alice, collection) == before


def test_login_wants_json_too(anonymous: Api) -> None:
    body = json.dumps({"username": "alice@example.com", "password": "alice-pw"})
    r = anonymous.session.post(anonymous.url("accounts/action/?do=login"), data=body,
                               headers={"Content-Type": "text/plain"}, timeout=30)
    assert_error(r, 415)
    assert "sessionid" not in r.cookies


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
def test_json_content_types_are_accepted(alice: Api, content_type: str) -> None:
    r = alice.post("tags/", {"name": "json-ok"}, headers={"Content-Type": content_type})
    assert r.status_code == 201, r.text


def test_bodyless_actions_need_no_content_type(alice: Api) -> None:
    r = alice.session.post(alice.url("accounts/action/?do=authenticate_asynchronous"), auth=alice.auth, timeout=30)
    assert r.status_code == 200, r.text


def test_async_auth_cookie_flags(alice: Api) -> None:
    r = alice.post("accounts/action/?do=authenticate_asynchronous")
    cookie = r.headers["Set-Cookie"]
    assert "async_auth=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie, cookie
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS: tests/clients/test_node.py


async def _open_feed(alice: Api, origin: str | None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # an IP host
        assert alice.auth is not None
        async with session.post(alice.url("accounts/action/?do=authenticate_asynchronous"),
                                headers={"Authorization": aiohttp.encode_basic_auth(*alice.auth)}) as r:
            assert r.status == 200
        headers = {"Origin": origin} if origin else {}
        try:
            async with session.ws_connect(f"{alice.base}/websocket", headers=headers) as ws:
                await ws.close()
                return 101, None
        except aiohttp.WSServerHandshakeError as e:
            return e.status, None


@pytest.mark.parametrize(("origin", "status"), [
    (None, 101), ("{base}", 101), ("https://evil.example", 403), ("null", 403), ("{base}.evil.example", 403),
])
def test_websocket_checks_origin(alice: Api, origin: str | None, status: int) -> None:
    origin = origin.format(base=alice.base) if origin else None
    assert asyncio.run(_open_feed(alice, origin))[0] == status
