"""A small RFB (VNC) client over a TCP stream or a websockify-style WebSocket, for tests and bench/vnc.py.

Only what the tests need: protocol version 3.8, VNC authentication (security type 2), ClientInit /
ServerInit, SetEncodings (raw, DesktopSize) and FramebufferUpdateRequest / FramebufferUpdate with raw
rectangles.  Other server messages (colour map, bell, cut text) are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass
from typing import Any

try:  # cryptography ≥ 43 moved the old ciphers
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]
from cryptography.hazmat.primitives.ciphers import Cipher, modes

SECURITY_VNC = 2
RAW, DESKTOP_SIZE, LED_STATE = 0, -223, -261


class RfbError(Exception):
    pass


class AuthFailed(RfbError):
    pass


def vnc_response(password: str, challenge: bytes) -> bytes:
    """DES-ECB of the 16-byte challenge with the password's first 8 bytes, each bit-reversed."""
    key = password.encode("latin-1")[:8].ljust(8, b"\0")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in key)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


# --- byte streams -------------------------------------------------------------------------------


class TcpStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> TcpStream:
        return cls(*await asyncio.open_connection(host, port))

    async def read(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class WsStream:
    """The RFB byte stream over binary WebSocket frames (websockify's protocol)."""

    def __init__(self, session: Any, ws: Any) -> None:
        self.session, self.ws = session, ws
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, url: str, origin: str) -> WsStream:
        import aiohttp

        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, headers={"Origin": origin}, protocols=("binary",),
                                          max_msg_size=0, autoping=True)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def read(self, n: int) -> bytes:
        import aiohttp

        while len(self.buffer) < n:
            message = await self.ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                self.buffer += message.data
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.ERROR):
                raise asyncio.IncompleteReadError(bytes(self.buffer), n)
            else:
                raise RfbError(f"unexpected WebSocket message {message.type}")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def write(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


# --- the protocol -------------------------------------------------------------------------------


@dataclass
class ServerInit:
    width: int
    height: int
    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    shifts: tuple[int, int, int]   # red, green, blue
    name: str


@dataclass
class Update:
    rects: list[tuple[int, int, int, int, bytes]]  # x, y, w, h, raw pixels
    nbytes: int                                     # bytes read for the whole message
    first_byte: float                               # time.perf_counter() when the message type arrived
    done: float


class RfbClient:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.version = b""
        self.init: ServerInit | None = None

    async def handshake(self, password: str) -> ServerInit:
        """Version, VNC authentication (raises AuthFailed), ClientInit/ServerInit, raw encoding (+ DesktopSize)."""
        self.version = await self.stream.read(12)
        if not self.version.startswith(b"RFB 003.") or not self.version.endswith(b"\n"):
            raise RfbError(f"not an RFB greeting: {self.version!r}")
        await self.stream.write(b"RFB 003.008\n")
        (count,) = struct.unpack("!B", await self.stream.read(1))
        if count == 0:
            raise RfbError(f"server refused: {await self._reason()}")
        types = list(await self.stream.read(count))
        if SECURITY_VNC not in types:
            raise RfbError(f"no VNC authentication offered: {types}")
        await self.stream.write(bytes([SECURITY_VNC]))
        challenge = await self.stream.read(16)
        await self.stream.write(vnc_response(password, challenge))
        (result,) = struct.unpack("!I", await self.stream.read(4))
        if result != 0:
            raise AuthFailed(await self._reason())
        await self.stream.write(b"\x01")  # ClientInit: shared
        head = await self.stream.read(24)
        width, height = struct.unpack("!HH", head[:4])
        bpp, depth, big_endian, true_colour = struct.unpack("!BBBB", head[4:8])
        shifts = struct.unpack("!BBB", head[14:17])
        (name_len,) = struct.unpack("!I", head[20:24])
        name = (await self.stream.read(name_len)).decode(errors="replace")
        self.init = ServerInit(width, height, bpp, depth, bool(big_endian), bool(true_colour), shifts, name)
        await self.stream.write(struct.pack("!BxHii", 2, 2, 0, -223))  # SetEncodings: raw, DesktopSize
        return self.init

    async def _reason(self) -> str:
        try:
            (length,) = struct.unpack("!I", await self.stream.read(4))
            return (await self.stream.read(length)).decode(errors="replace")
        except (asyncio.IncompleteReadError, ConnectionError):
            return ""

    async def led_ping(self) -> Update:
        """A round trip QEMU answers at once, without waiting for its display refresh timer: SetEncodings
        with QEMU's LED-state pseudo-encoding makes it send the LED state right away."""
        await self.stream.write(struct.pack("!BxHiii", 2, 3, RAW, DESKTOP_SIZE, LED_STATE))
        update = await self.update()
        if not any(w == h == 0 for _, _, w, h, _ in update.rects):
            raise RfbError("expected an LED-state update")
        return update

    async def request(self, incremental: bool = False) -> None:
        assert self.init is not None
        await self.stream.write(struct.pack("!BBHHHH", 3, int(incremental), 0, 0, self.init.width,
                                            self.init.height))

    async def update(self) -> Update:
        """The next FramebufferUpdate (other server messages are read and dropped)."""
        assert self.init is not None
        bytes_per_pixel = self.init.bits_per_pixel // 8
        while True:
            kind = (await self.stream.read(1))[0]
            first = time.perf_counter()
            if kind == 0:
                break
            if kind == 1:  # SetColourMapEntries
                _, _, n = struct.unpack("!BHH", await self.stream.read(5))
                await self.stream.read(6 * n)
            elif kind == 2:  # Bell
                pass
            elif kind == 3:  # ServerCutText
                (n,) = struct.unpack("!3xI", await self.stream.read(7))
                await self.stream.read(n)
            else:
                raise RfbError(f"unexpected server message {kind}")
        (count,) = struct.unpack("!xH", await self.stream.read(3))
        rects, nbytes = [], 4
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack("!HHHHi", await self.stream.read(12))
            nbytes += 12
            if encoding == 0:
                pixels = await self.stream.read(w * h * bytes_per_pixel)
                nbytes += len(pixels)
                rects.append((x, y, w, h, pixels))
            elif encoding == -223:  # DesktopSize: the guest changed its display mode
                self.init.width, self.init.height = w, h
            elif encoding == LED_STATE:  # QEMU's keyboard LED state: one byte
                await self.stream.read(1)
                nbytes += 1
                rects.append((x, y, 0, 0, b""))
            else:
                raise RfbError(f"unexpected encoding {encoding}")
        return Update(rects, nbytes, first, time.perf_counter())

    async def full_frame(self) -> Update:
        await self.request(incremental=False)
        return await self.update()

    async def close(self) -> None:
        await self.stream.close()


def distinct_pixels(update: Update, bytes_per_pixel: int = 4, limit: int = 1000) -> int:
    """How many different pixel values the update's rectangles hold (counting stops at ``limit``)."""
    seen: set[bytes] = set()
    for *_, pixels in update.rects:
        view = memoryview(pixels)
        for i in range(0, len(pixels), bytes_per_pixel):
            seen.add(bytes(view[i:i + bytes_per_pixel]))
            if len(seen) >= limit:
                return len(seen)
    return len(seen)


def rgb_rows(init: ServerInit, update: Update) -> dict[tuple[int, int], tuple[int, int, int]]:
    """Pixel (x, y) → (r, g, b) of a 32-bit little-endian true-colour update (QEMU's default format)."""
    assert init.bits_per_pixel == 32 and init.true_colour and not init.big_endian, init
    rs, gs, bs = init.shifts
    out: dict[tuple[int, int], tuple[int, int, int]] = {}
    for x0, y0, w, _h, pixels in update.rects:
        for i, (value,) in enumerate(struct.iter_unpack("<I", pixels)):
            out[(x0 + i % w, y0 + i // w)] = ((value >> rs) & 255, (value >> gs) & 255, (value >> bs) & 255)
    return out
