"""The server context responder (spec §33): each guest's second serial port (ttyS1) answered
from the document the API node last pushed for that server (`context.set`).

QEMU listens on the port's UNIX socket (`<serial type='unix'><source mode='bind'>`, see
`agents/translate.py`); the agent connects as its only client once the domain runs, and again
after the agent restarts.  Wire protocol (§33.2): a request is `<` newline path newline `>`
(newline: LF or CRLF); the answer is one line, then LF, then EOT.  Bytes that do not form a
request are skipped up to the next `<`.

A guest is bounded: a path is at most `MAX_PATH` bytes, and each port is read at most
`MAX_REQUESTS_PER_SECOND` answers and `MAX_BYTES_PER_SECOND` bytes a second: past that the agent
simply reads more slowly (QEMU's buffer fills, the guest's writes wait), so a flooding guest
slows only itself.  Every port is served by its own task on the agent's event loop and answers
come from memory: nothing here waits on libvirt or on the API node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any

log = logging.getLogger(__name__)

MAX_PATH = 1024
MAX_REQUESTS_PER_SECOND = 50.0
MAX_BYTES_PER_SECOND = 256 * 1024.0
READ_SIZE = 4096
REQUEST = re.compile(rb"<\r?\n([^\r\n<>]*)\r?\n>")
# What a request can look like before it is complete: worth waiting for more bytes.
REQUEST_PREFIX = re.compile(rb"<(?:\r|\r?\n(?:[^\r\n<>]*(?:\r|\r?\n)?)?)?")
EOT = b"\x04"
# Control characters in a leaf: \n \r \t as the spec says; any other (EOT would end the answer
# early) as a JSON-style \u00XX escape [decision].
CONTROL = re.compile("[\x00-\x1f\x7f]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
MISSING = object()


class RequestParser:
    """Bytes from the guest in, request paths out."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self.buffer += data
        paths: list[str] = []
        while True:
            start = self.buffer.find(b"<")
            if start < 0:
                self.buffer.clear()
                return paths
            del self.buffer[:start]
            match = REQUEST.match(self.buffer)
            if match is not None and len(match[1]) <= MAX_PATH:
                paths.append(match[1].decode("utf-8", errors="replace"))
                del self.buffer[:match.end()]
            elif REQUEST_PREFIX.fullmatch(self.buffer) and len(self.buffer) <= MAX_PATH + 4:
                return paths  # an unfinished request: wait for the rest
            else:
                del self.buffer[:1]  # malformed: skip to the next "<"


def lookup(document: Any, path: str) -> Any:
    """The value at ``path`` (``/``-separated; integer segments index lists), or MISSING."""
    node = document
    for segment in (s for s in path.split("/") if s):
        if isinstance(node, dict):
            node = node.get(segment, MISSING)
        elif isinstance(node, list) and segment.isascii() and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            return MISSING
        if node is MISSING:
            return MISSING
    return node


def answer(document: Any, path: str) -> bytes:
    """One answer line: JSON for objects and lists, the bare value for leaves (§33.2)."""
    node = lookup(document, path)
    if node is MISSING or node is None:
        line = ""
    elif isinstance(node, dict | list):
        line = json.dumps(node)
    elif isinstance(node, str):
        line = CONTROL.sub(_escape, node)
    else:
        line = json.dumps(node)  # numbers and booleans as their JSON text
    return line.encode() + b"\n" + EOT


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    return NAMED.get(char) or f"\\u{ord(char):04x}"


class Throttle:
    """Spends time so that at most ``rate`` units pass per second (a bucket of one second's worth)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.allowance = rate
        self.last = time.monotonic()

    async def spend(self, units: float) -> None:
        now = time.monotonic()
        self.allowance = min(self.rate, self.allowance + (now - self.last) * self.rate)
        self.last = now
        self.allowance -= units
        if self.allowance < 0:
            await asyncio.sleep(-self.allowance / self.rate)


class ContextServer:
    def __init__(self, connect_timeout: float = 30.0) -> None:
        self.documents: dict[str, Any] = {}
        self.ports: dict[str, asyncio.Task[None]] = {}
        self.connect_timeout = connect_timeout

    def set(self, uuid: str, document: dict[str, Any]) -> None:
        self.documents[uuid] = document

    def attach(self, uuid: str, socket_path: str) -> None:
        """Serve the guest's context port from now on (idempotent)."""
        task = self.ports.get(uuid)
        if task is None or task.done():
            self.ports[uuid] = asyncio.get_running_loop().create_task(self._serve(uuid, socket_path),
                                                                      name=f"context:{uuid}")

    def forget(self, uuid: str) -> None:
        """The domain is gone: stop serving it and drop its document."""
        self.documents.pop(uuid, None)
        task = self.ports.pop(uuid, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self.ports.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.ports.clear()

    async def _serve(self, uuid: str, socket_path: str) -> None:
        """Connect to QEMU's socket (it appears once the domain runs) and answer until it closes;
        reconnect while the socket exists (a guest reboot keeps it), give up once it is gone."""
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(socket_path)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    log.info("context port of %s: %s is gone; not serving it", uuid, socket_path)
                    return
                await asyncio.sleep(0.2)
                continue
            except OSError as err:
                log.warning("context port of %s: %s", uuid, err)
                return
            try:
                await self._answer_requests(uuid, reader, writer)
            except (ConnectionError, OSError) as err:
                log.info("context port of %s: %s", uuid, err)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            deadline = time.monotonic() + 2.0  # QEMU closed it: the domain stopped, or is about to

    async def _answer_requests(self, uuid: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RequestParser()
        requests, volume = Throttle(MAX_REQUESTS_PER_SECOND), Throttle(MAX_BYTES_PER_SECOND)
        while data := await reader.read(READ_SIZE):
            await volume.spend(len(data))
            for path in parser.feed(data):
                await requests.spend(1)
                # Answered from the document as it is now: the API node pushes every change.
                writer.write(answer(self.documents.get(uuid, {}), path))
                await writer.drain()
