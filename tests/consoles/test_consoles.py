"""VNC and serial consoles against a real running test guest (spec §12.9.5–§12.9.7, §16.3).

One API node and one guest for the whole module, the guest on a real remote host (conftest.py):
every console here goes through the node's SSH tunnels to that host.  The tests run in file order
and the last ones stop and restart the guest (the serial console shows the boot report only after
a fresh start).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import parse_qs, quote, urlparse

import aiohttp
import pytest

from tests.consoles.browser import Chromium, decode_png
from tests.consoles.conftest import TOKEN_TTL, VNC_PASSWORD, Guest, wait_for
from tests.consoles.rfb import AuthFailed, RfbClient, TcpStream, WsStream, distinct_pixels, rgb_rows
from tests.strato_process import domain_names

pytestmark = pytest.mark.libvirt


# --- helpers ------------------------------------------------------------------------------------


def netloc(url: str, scheme: str) -> tuple[str, int]:
    parsed = urlparse(url)
    assert parsed.scheme == scheme and parsed.hostname and parsed.port, url
    return parsed.hostname, parsed.port


def websocket_url(guest: Guest, page_url: str) -> str:
    """``ws://node/console/websockify?token=…`` from the console page's ``path`` parameter."""
    page = urlparse(page_url)
    assert f"{page.scheme}://{page.netloc}" == guest.origin, page_url
    assert page.path == "/console/novnc/vnc_lite.html", page_url
    path = parse_qs(page.query)["path"][0]
    assert path.startswith("console/websockify?token="), path
    return f"ws://{page.netloc}/{path}"


def token_of(ws_url: str) -> str:
    return parse_qs(urlparse(ws_url).query)["token"][0]


def refused(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return False
    except ConnectionRefusedError:
        return True


async def ws_status(url: str, origin: str) -> int:
    """The HTTP status a WebSocket connection attempt gets (101 when it is accepted)."""
    try:
        stream = await WsStream.connect(url, origin)
    except aiohttp.WSServerHandshakeError as err:
        return err.status
    await stream.close()
    return 101


async def assert_real_frame(client: RfbClient, password: str = VNC_PASSWORD) -> None:
    init = await client.handshake(password)
    assert client.version in (b"RFB 003.008\n", b"RFB 003.007\n", b"RFB 003.003\n"), client.version
    assert (init.width, init.height) >= (320, 200), init
    assert init.true_colour and init.bits_per_pixel in (8, 16, 32), init
    assert init.name.startswith("QEMU"), init
    update = await asyncio.wait_for(client.full_frame(), 30)
    covered = sum(w * h for _, _, w, h, _ in update.rects)
    assert covered == init.width * init.height, (covered, init)
    assert distinct_pixels(update, init.bits_per_pixel // 8) >= 2, "the guest's screen is one colour"


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {timeout}s; got {data[-2000:]!r}"
        chunk = await asyncio.wait_for(reader.read(65536), left)
        assert chunk, f"connection closed before {marker!r}; got {data[-2000:]!r}"
        data += chunk
    return data


# --- VNC over the vnc:// tunnel and the WebSocket -----------------------------------------------


def test_the_guest_runs_on_a_remote_host_reached_over_ssh(guest: Guest) -> None:
    """What the tunnels below go through: the node's one host is the harness host, over SSH; the guest's
    domain is in that host's own libvirtd (not this machine's), its display on that host's loopback."""
    assert guest.host is not None
    hosts = json.loads(guest.node.cli("hosts", "list"))
    assert [(h["name"], h["address"], h["state"]) for h in hosts] == [
        (guest.host.name, f"ssh://root@{guest.host.address}:22", "up")]
    assert domain_names(guest.domain(), guest.host.uri) == [guest.domain()]
    assert domain_names(guest.domain()) == []  # this machine's libvirtd
    assert guest.direct_vnc()[0] == "127.0.0.1"  # the host's loopback, which only the host reaches



async def test_vnc_url_speaks_rfb_with_vnc_auth_and_real_frames(guest: Guest) -> None:
    host, port = netloc(guest.open("open_vnc")["vnc_url"], "vnc")
    client = RfbClient(await TcpStream.connect(host, port))
    try:
        await assert_real_frame(client)
        again = await asyncio.wait_for(client.full_frame(), 30)  # the session keeps working
        assert again.nbytes > 0
    finally:
        await client.close()


async def test_websocket_speaks_rfb_with_vnc_auth_and_real_frames(guest: Guest) -> None:
    url = websocket_url(guest, guest.open("open_vnc")["console_page_url"])
    client = RfbClient(await WsStream.connect(url, guest.origin))
    try:
        await assert_real_frame(client)
    finally:
        await client.close()


@pytest.mark.parametrize(("offer", "chosen"), [((), None), (("binary",), "binary"),
                                               (("binary", "base64"), "binary")])
async def test_websocket_negotiates_subprotocols_as_websockify_does(guest: Guest, offer: tuple[str, ...],
                                                                    chosen: str | None) -> None:
    """websockify ≥ 0.9 (CHANGES: "Base64 support removed and binary mode is now required") takes up
    ``binary`` when offered and otherwise no subprotocol (noVNC ≥ 1.0 offers none); frames are binary."""
    url = websocket_url(guest, guest.open("open_vnc")["console_page_url"])
    async with aiohttp.ClientSession() as session, session.ws_connect(
            url, headers={"Origin": guest.origin}, protocols=offer, max_msg_size=0) as ws:
        assert ws.protocol == chosen
        message = await asyncio.wait_for(ws.receive(), 30)
        assert message.type == aiohttp.WSMsgType.BINARY, message
        assert message.data[:10] == b"RFB 003.00", message.data[:12]


def test_browser_console_page_shows_the_guest_screen(guest: Guest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page = guest.open("open_vnc")["console_page_url"] + "&password=" + quote(VNC_PASSWORD)
    browser = Chromium(tmp_path / "chromium.log")
    try:
        browser.open_page(page)

        def canvas() -> dict | None:  # type: ignore[type-arg]
            state = browser.evaluate("""(() => {
                const c = document.querySelector('#screen canvas');
                const r = c && c.getBoundingClientRect();
                return {status: document.getElementById('status').textContent,
                        rect: r && r.width > 0 ? {x: r.x, y: r.y, width: r.width, height: r.height} : null};
            })()""")
            assert state is None or "Disconnected" not in state["status"], state
            return state if state and state["rect"] and state["status"].startswith("Connected") else None

        state = wait_for(canvas, 30, "noVNC connected with a canvas", 0.25)
        assert guest.node.base and "QEMU" in state["status"], state

        # Poll screenshots of the canvas until it has been painted (bounded).
        deadline = time.monotonic() + 20
        while True:
            width, height, rows = decode_png(browser.screenshot(state["rect"]))
            colours = {pixel for row in rows for pixel in row}
            bright = sum(1 for row in rows for r, g, b in row if r + g + b > 3 * 128)
            if (len(colours) >= 2 and bright >= 50) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        shot_path = tmp_path / "console.png"
        shot_path.write_bytes(browser.screenshot())
        assert len(colours) >= 2, f"the console canvas is one colour {colours}; see {shot_path}"
        assert 50 <= bright < 0.9 * width * height, f"{bright} bright pixels of {width}x{height}; see {shot_path}"
    finally:
        browser.close()

    # And it is the guest's screen: the canvas matches the framebuffer read over RFB.
    async def framebuffer() -> tuple:  # type: ignore[type-arg]
        host, port = netloc(guest.open("open_vnc")["vnc_url"], "vnc")
        client = RfbClient(await TcpStream.connect(host, port))
        try:
            init = await client.handshake(VNC_PASSWORD)
            return init, await client.full_frame()
        finally:
            await client.close()

    init, update = asyncio.run(framebuffer())
    assert (width, height) == (init.width, init.height), ((width, height), init)
    pixels = rgb_rows(init, update)
    same = sum(1 for y, row in enumerate(rows) for x, pixel in enumerate(row) if pixels[(x, y)] == pixel)
    assert same >= 0.98 * width * height, f"only {same} of {width * height} pixels match the framebuffer"


async def test_wrong_vnc_password_fails_security_result(guest: Guest) -> None:
    host, port = netloc(guest.open("open_vnc")["vnc_url"], "vnc")
    for password in ("wrong-pw", VNC_PASSWORD[:7]):
        client = RfbClient(await TcpStream.connect(host, port))
        try:
            with pytest.raises(AuthFailed):
                await client.handshake(password)
        finally:
            await client.close()
    # Only the first 8 characters count (§16.3).
    client = RfbClient(await TcpStream.connect(host, port))
    try:
        await client.handshake(VNC_PASSWORD[:8] + "-ignored")
    finally:
        await client.close()


# --- tokens and Origin ----------------------------------------------------------------------------


async def test_websocket_refuses_wrong_reused_and_foreign_origin(guest: Guest) -> None:
    url = websocket_url(guest, guest.open("open_vnc")["console_page_url"])
    base = url.split("?", 1)[0]
    assert await ws_status(f"{base}?token=not-a-token", guest.origin) == 403
    assert await ws_status(base, guest.origin) == 403
    assert await ws_status(url, "http://evil.example.com") == 403
    assert await ws_status(url, guest.origin.replace("127.0.0.1", "localhost")) == 403

    client = RfbClient(await WsStream.connect(url, guest.origin))
    try:
        await assert_real_frame(client)
        assert await ws_status(url, guest.origin) == 403, "a token is single-use"
    finally:
        await client.close()
    assert await ws_status(url, guest.origin) == 403, "a token is single-use"


async def test_websocket_refuses_an_expired_token(guest: Guest) -> None:
    url = websocket_url(guest, guest.open("open_vnc")["console_page_url"])
    await asyncio.sleep(TOKEN_TTL + 1)
    assert await ws_status(url, guest.origin) == 403


# --- tunnel lifetime ------------------------------------------------------------------------------


async def test_open_twice_same_url_close_refuses_reopen_new_port(guest: Guest) -> None:
    first = guest.open("open_vnc")
    second = guest.open("open_vnc")
    assert first["vnc_url"] == second["vnc_url"]
    host, port = netloc(first["vnc_url"], "vnc")
    stale_ws = websocket_url(guest, second["console_page_url"])

    client = RfbClient(await TcpStream.connect(host, port))
    await client.handshake(VNC_PASSWORD)
    closed = guest.open("close_vnc")
    assert closed["action"] == "close_vnc" and closed["result"] == "success", closed
    try:
        # The open session is cut and the port refuses new connections.
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await asyncio.wait_for(client.full_frame(), 10)
    finally:
        await client.close()
    assert refused(port, host)
    assert await ws_status(stale_ws, guest.origin) == 403, "tokens of a closed tunnel are void"
    assert guest.open("close_vnc")["result"] == "success", "closing twice still answers success"

    reopened = guest.open("open_vnc")
    new_host, new_port = netloc(reopened["vnc_url"], "vnc")
    assert new_port != port
    client = RfbClient(await TcpStream.connect(new_host, new_port))
    try:
        await assert_real_frame(client)
    finally:
        await client.close()


def test_another_users_server_is_not_found(guest: Guest) -> None:
    for do in ("open_vnc", "close_vnc", "open_console", "close_console"):
        r = guest.action(do, guest.other)
        assert r.status_code == 404, f"{do}: {r.status_code} {r.text}"


# --- serial console ---------------------------------------------------------------------------


async def test_serial_console_asks_for_the_password_and_refuses_a_wrong_one(guest: Guest) -> None:
    opened = guest.open("open_console")
    assert opened["action"] == "open_console", opened
    assert guest.open("open_console")["console_url"] == opened["console_url"]
    host, port = netloc(opened["console_url"], "csconsole")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        assert await asyncio.wait_for(reader.readexactly(10), 10) == b"Password: "
        writer.write(b"not-the-password\n")
        rest = await asyncio.wait_for(reader.read(), 10)  # until the proxy closes the connection
        assert b"STRATO" not in rest and b"Wrong password" in rest, rest
    finally:
        writer.close()
    # The VNC password applies in full here, not only its first 8 characters.
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await asyncio.wait_for(reader.readexactly(10), 10)
        writer.write(VNC_PASSWORD[:8].encode() + b"\n")
        assert b"Wrong password" in await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_stopping_the_server_closes_its_tunnels_and_refuses_new_ones(guest: Guest) -> None:
    vnc = guest.open("open_vnc")
    vnc_host, vnc_port = netloc(vnc["vnc_url"], "vnc")
    _, console_port = netloc(guest.open("open_console")["console_url"], "csconsole")
    token_url = websocket_url(guest, guest.open("open_vnc")["console_page_url"])
    client = RfbClient(await TcpStream.connect(vnc_host, vnc_port))
    await client.handshake(VNC_PASSWORD)
    try:
        await asyncio.to_thread(guest.stop)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await asyncio.wait_for(client.full_frame(), 10)
    finally:
        await client.close()
    assert refused(vnc_port) and refused(console_port)
    assert await ws_status(token_url, guest.origin) == 403
    for do in ("open_vnc", "open_console"):
        r = guest.action(do)
        assert r.status_code == 403, f"{do} on a stopped server: {r.status_code} {r.text}"


async def test_serial_console_shows_the_boot_report_after_a_fresh_start(guest: Guest) -> None:
    if guest.status() != "stopped":
        await asyncio.to_thread(guest.stop)
    r = guest.action("start")
    assert r.status_code == 202, r.text
    await asyncio.to_thread(wait_for, lambda: guest.status() == "running", 60, "running", 0.05)
    host, port = netloc(guest.open("open_console")["console_url"], "csconsole")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        assert await asyncio.wait_for(reader.readexactly(10), 10) == b"Password: "
        writer.write(VNC_PASSWORD.encode() + b"\n")
        await writer.drain()
        text = (await read_until(reader, b"STRATO-READY", 120)).decode(errors="replace")
    finally:
        writer.close()
    assert "STRATO-REPORT-BEGIN" in text and "STRATO-REPORT-END" in text, text[-2000:]
    report = text.rsplit("STRATO-REPORT-BEGIN", 1)[1].split("STRATO-REPORT-END", 1)[0]
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    assert "cpus=1" in lines, lines
    assert any(line.startswith("block name=vda bus=virtio") for line in lines), lines
    # The restarted server has fresh tunnels: the VNC one works again.
    host, port = netloc(guest.open("open_vnc")["vnc_url"], "vnc")
    client = RfbClient(await TcpStream.connect(host, port))
    try:
        await assert_real_frame(client)
    finally:
        await client.close()


async def test_restarting_the_server_closes_its_tunnels(guest: Guest) -> None:
    """§12.9.5: the tunnel stays open until close_vnc or until the server stops/restarts."""
    vnc_host, vnc_port = netloc(guest.open("open_vnc")["vnc_url"], "vnc")
    _, console_port = netloc(guest.open("open_console")["console_url"], "csconsole")
    r = guest.action("restart")
    assert r.status_code == 202, r.text
    assert refused(vnc_port, vnc_host) and refused(console_port), "tunnels survive a restart"
    reopened = guest.open("open_vnc")
    assert netloc(reopened["vnc_url"], "vnc")[1] != vnc_port
