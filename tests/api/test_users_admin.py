"""Issue 16: ``strato users disable|enable|delete [--purge]`` against a real node (its local host's
libvirt pool and a running QEMU guest)."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
import requests

from tests.api.conftest import assert_error, make_drive, make_server, wait_idle
from tests.strato_process import ROOT, Api, StratoServer, domain_names, wait_for

pytestmark = pytest.mark.libvirt


def cli(node: StratoServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--data-dir", str(node.data_dir)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, **node.env},
                          timeout=600)


def login(api: Api) -> requests.Session:
    """A pycloudsigma-style session login (sessionid + csrftoken cookies)."""
    browser = requests.Session()
    assert api.auth is not None
    r = browser.post(api.url("accounts/action/?do=login"), json={"username": api.auth[0], "password": api.auth[1]},
                     timeout=30)
    assert r.status_code == 200, r.text
    return browser


def _median_ms(url: str, auth: tuple[str, str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        r = requests.get(url, auth=auth, timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 401, r.text
    return statistics.median(times)


async def _feed_ends_after(api: Api, disable: Any) -> bool:
    """Open the change feed, disable the user, report whether the server ended the socket."""
    assert api.auth is not None
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(api.url("accounts/action/?do=authenticate_asynchronous"),
                                headers={"Authorization": aiohttp.encode_basic_auth(*api.auth)}) as r:
            assert r.status == 200
        async with session.ws_connect(f"{api.base}/websocket") as ws:
            await asyncio.to_thread(disable)
            message = await asyncio.wait_for(ws.receive(), 15)
            return message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


def test_disable_refuses_every_credential_and_enable_undoes_it(strato_server: StratoServer) -> None:
    email = "disabled@example.com"
    api = strato_server.add_user(email, "right-pw")
    bearer = strato_server.cli("tokens", "create", email)
    browser = login(api)
    assert api.get("servers/").status_code == 200  # the Basic pair is remembered from here on
    ws_ended = asyncio.run(_feed_ends_after(api, lambda: cli(strato_server, "users", "disable", email)))
    assert ws_ended, "the open change feed socket was not ended"

    wrong = assert_error(requests.get(api.url("servers/"), auth=(email, "wrong-pw"), timeout=30), 401)
    refused = assert_error(api.get("servers/"), 401)
    assert refused == wrong  # a disabled user hears what a wrong password hears
    assert_error(requests.get(api.url("servers/"), headers={"Authorization": f"Bearer {bearer}"}, timeout=30), 401)
    assert_error(browser.get(api.url("servers/"), timeout=30), 401)  # the live session ended
    r = requests.post(api.url("accounts/action/?do=login"), json={"username": email, "password": "right-pw"},
                      timeout=30)
    assert_error(r, 401)
    assert "sessionid" not in r.cookies
    # The same Argon2 work as a wrong password (ratio, not a time limit: the machine is shared; few
    # tries, as every one counts towards the e-mail's throttle).
    assert api.auth is not None
    ratio = _median_ms(api.url("servers/"), api.auth) / _median_ms(api.url("servers/"), (email, "wrong"))
    assert 0.5 < ratio < 2, ratio

    strato_server.cli("users", "enable", email)
    assert api.get("servers/").status_code == 200
    assert requests.get(api.url("servers/"), headers={"Authorization": f"Bearer {bearer}"},
                        timeout=30).status_code == 200
    assert login(api).get(api.url("servers/"), timeout=30).status_code == 200


def _ws_status(url: str) -> int:
    async def attempt() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url, protocols=("binary",)) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as err:
                return err.status
    return asyncio.run(attempt())


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return False
    except ConnectionRefusedError:
        return True


def test_delete_refuses_an_owner_and_purge_removes_everything(strato_server: StratoServer, alice: Api) -> None:
    email = "leaving@example.com"
    api = strato_server.add_user(email, "leaving-pw")
    prefix = strato_server.env["STRATO_AGENT_PREFIX"]
    pool = strato_server.data_dir / "pools" / "local"
    before = {p.name for p in pool.iterdir()}
    domain = None
    try:
        disk, spare = make_drive(api, size=2**26), make_drive(api, size=2**26)
        wait_idle(api, disk["uuid"], spare["uuid"])
        assert len({p.name for p in pool.iterdir()} - before) == 2  # their volumes on the host
        server = make_server(api, mem=2**27, drives=[{"drive": disk["uuid"], "device": "virtio",
                                                      "dev_channel": "0:0", "boot_order": 1}])
        stopped = make_server(api, name="idle")
        api.ok("POST", "tags/", {"name": "mine"}, 201)
        domain = f"{prefix}{server['uuid']}"
        assert api.post(f"servers/{server['uuid']}/action/?do=start").status_code == 202
        wait_for(lambda: api.ok("GET", f"servers/{server['uuid']}/")["status"] == "running", 120, "running")
        assert domain in domain_names(prefix)
        opened = api.ok("POST", f"servers/{server['uuid']}/action/?do=open_vnc", status=202)
        vnc_port = urlparse(opened["vnc_url"]).port
        page = urlparse(opened["console_page_url"])
        websockify = f"ws://{page.netloc}/{parse_qs(page.query)['path'][0]}"

        # Disabled: the console link and the tunnel stop working, the guest keeps running.
        strato_server.cli("users", "disable", email)
        assert _ws_status(websockify) == 403
        assert vnc_port is not None
        wait_for(lambda: _refused(vnc_port), 15, "the VNC tunnel closed")
        assert domain in domain_names(prefix)

        refused = cli(strato_server, "users", "delete", email)
        assert refused.returncode == 1
        assert "owns 2 servers, 2 drives, 1 tags" in refused.stderr, refused.stderr
        assert domain in domain_names(prefix)

        done = cli(strato_server, "users", "delete", email, "--purge")
        assert done.returncode == 0, done.stderr
        assert domain not in domain_names(prefix)
        assert {p.name for p in pool.iterdir()} == before, "a volume of the purged user is left on the host"
        assert_error(api.get("servers/"), 401)
        for path in (f"servers/{server['uuid']}/", f"servers/{stopped['uuid']}/", f"drives/{spare['uuid']}/"):
            assert_error(alice.get(path), 404)
        again = cli(strato_server, "users", "delete", email)
        assert again.returncode == 1 and "no user" in again.stderr
    finally:
        if domain is not None and domain in domain_names(prefix):
            subprocess.run(["virsh", "destroy", domain], capture_output=True, check=False)
            subprocess.run(["virsh", "undefine", domain], capture_output=True, check=False)
