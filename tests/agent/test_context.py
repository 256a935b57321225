"""The context responder (agents/context.py) against real UNIX sockets, from the host side.

Each test plays QEMU: it listens on a context port's socket as QEMU does for
`<serial type='unix'><source mode='bind'>`, and writes to it what a guest writes to its ttyS1;
the agent's :class:`ContextServer` connects and answers.  The request/answer pairs come from
the upstream dumps (spec §33.2).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agents.context import MAX_REQUESTS_PER_SECOND, ContextServer
from tests.strato_process import SPEC

DUMPS = SPEC / "dumps"
UUID = "e0fcf2ae-020e-45e1-bf69-982b17da4b6a"
OTHER = "11111111-2222-4333-8444-555555555555"


def dump(name: str) -> str:
    return (DUMPS / name).read_text().strip()


def document(name: str = "response_context_all") -> dict:
    return json.loads(dump(name))


class GuestPort:
    """The host side of one guest's ttyS1: what the guest writes goes in, answers come out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connected = asyncio.Event()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None

    async def listen(self) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.reader, self.writer = reader, writer
            self.connected.set()

        self.server = await asyncio.start_unix_server(accept, str(self.path))

    async def write(self, data: bytes) -> None:
        await asyncio.wait_for(self.connected.wait(), 10)
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 5) -> bytes:
        assert self.reader is not None
        raw = await asyncio.wait_for(self.reader.readuntil(b"\x04"), timeout)
        assert raw.endswith(b"\n\x04"), raw
        return raw[:-2]

    async def ask(self, path: str) -> str:
        await self.write(f"<\n{path}\n>".encode())
        return (await self.answer()).decode()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A short directory: UNIX socket paths are limited to 107 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="ctx", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def contexts() -> AsyncIterator[ContextServer]:
    server = ContextServer(connect_timeout=5)
    yield server
    await server.close()


async def guest(contexts: ContextServer, tmp_path: Path, uuid: str, doc: dict) -> GuestPort:
    port = GuestPort(tmp_path / f"{uuid}.context")
    await port.listen()
    contexts.set(uuid, doc)
    contexts.attach(uuid, str(port.path))
    await asyncio.wait_for(port.connected.wait(), 10)
    return port


async def test_dump_pairs_on_one_open_port(contexts: ContextServer, tmp_path: Path) -> None:
    port = await guest(contexts, tmp_path, UUID, document())
    # Everything: "<\n\n>" as cloud-init sends it, compact single-line JSON.
    whole = await port.ask("")
    assert "\n" not in whole and json.loads(whole) == document()
    assert await port.ask("name") == dump("response_context_single_value")
    assert await port.ask("/meta/ssh_public_key") == dump("response_context_single_value_ssh_key")
    # Rebuilt on every request: a pushed change shows in the next answer, same port.
    renamed = {**document(), "name": "test_srv_test_guest_context_renamed",
               "meta": {**document()["meta"], "another_key": "a value or something"}}
    contexts.set(UUID, renamed)
    assert await port.ask("name") == dump("response_context_single_value_dynamic")
    assert await port.ask("/meta/another_key") == dump("response_context_single_value_another_key_dynamic")
    contexts.set(UUID, document("response_global_context_all"))
    assert await port.ask("/global_context/new_global_key") == dump("response_global_context_single_value")
    await port.close()


async def test_paths_leaves_and_misses(contexts: ContextServer, tmp_path: Path) -> None:
    doc = {**document(), "meta": {"text": "two\nlines\tand\rcr", "nested": {"deep": "x"}, "eot": "a\x04b"}}
    port = await guest(contexts, tmp_path, UUID, doc)
    assert await port.ask("/nics/0/mac") == doc["nics"][0]["mac"]
    assert await port.ask("nics/0/ip_v4_conf/ip/uuid/") == doc["nics"][0]["ip_v4_conf"]["ip"]["uuid"]
    assert json.loads(await port.ask("/nics/0")) == doc["nics"][0]
    assert await port.ask("/drives/0/drive/name") == doc["drives"][0]["drive"]["name"]
    assert json.loads(await port.ask("/meta/nested")) == {"deep": "x"}
    assert await port.ask("/meta/text") == "two\\nlines\\tand\\rcr"
    assert await port.ask("/meta/eot") == "a\\u0004b"  # EOT inside a value must not end the answer
    assert await port.ask("mem") == str(doc["mem"])
    assert await port.ask("hv_tsc") == "false"
    assert await port.ask("cpu_model") == ""        # null
    assert await port.ask("/nics/7/mac") == ""      # past the list
    assert await port.ask("/meta/nope") == ""
    assert await port.ask("name/too/deep") == ""
    await port.close()


async def test_malformed_bytes_are_skipped_to_the_next_request(contexts: ContextServer, tmp_path: Path) -> None:
    port = await guest(contexts, tmp_path, UUID, document())
    await port.write(b"garbage\x00\xff>>\n<not a request<\r\nname\r\n>")  # CRLF works too
    assert (await port.answer()).decode() == dump("response_context_single_value")
    await port.write(b"<\n/meta/ssh")  # a request in two writes
    await asyncio.sleep(0.2)
    await port.write(b"_public_key\n>")
    assert (await port.answer()).decode() == dump("response_context_single_value_ssh_key")
    await port.write(b"<\n" + b"x" * 5000 + b"\n>" + b"<\nname\n>")  # an oversized path is dropped
    assert (await port.answer()).decode() == dump("response_context_single_value")
    await port.close()


async def test_two_guests_never_see_each_other(contexts: ContextServer, tmp_path: Path) -> None:
    first = await guest(contexts, tmp_path, UUID, {**document(), "name": "first"})
    second = await guest(contexts, tmp_path, OTHER, {**document(), "name": "second", "uuid": OTHER})
    for _ in range(5):
        assert await first.ask("name") == "first"
        assert await second.ask("name") == "second"
        assert await second.ask("uuid") == OTHER
    contexts.forget(OTHER)  # the second domain is undefined: its port is closed, nothing answers
    await asyncio.sleep(0.2)
    with pytest.raises((TimeoutError, asyncio.IncompleteReadError, ConnectionError)):
        await second.write(b"<\nname\n>")
        await second.answer(timeout=1)
    assert await first.ask("name") == "first"
    await first.close()
    await second.close()


async def test_a_flooding_guest_slows_only_itself(contexts: ContextServer, tmp_path: Path) -> None:
    flood = await guest(contexts, tmp_path, UUID, document())
    calm = await guest(contexts, tmp_path, OTHER, {**document(), "name": "calm"})
    sent = 200

    async def flooding() -> None:
        assert flood.writer is not None
        for _ in range(sent):  # requests wrapped in junk, as fast as the socket takes them
            flood.writer.write(b"<\nname\n>" + b"j" * 2000)
            await flood.writer.drain()

    async def draining() -> list[float]:
        assert flood.reader is not None
        times = []
        while len(times) < sent:
            await asyncio.wait_for(flood.reader.readuntil(b"\x04"), 10)
            times.append(time.monotonic())
        return times

    writer, reader = asyncio.create_task(flooding()), asyncio.create_task(draining())
    await asyncio.sleep(0.5)
    # Meanwhile the other guest is answered at once, again and again.
    latencies = []
    for _ in range(10):
        t0 = time.monotonic()
        assert await calm.ask("name") == "calm"
        latencies.append(time.monotonic() - t0)
    assert max(latencies) < 0.5, latencies
    times = await reader
    await writer
    # Every request of the flood was answered, at the bounded rate (after one second's burst),
    # not as fast as it was written.
    least = (sent - MAX_REQUESTS_PER_SECOND) / MAX_REQUESTS_PER_SECOND
    assert times[-1] - times[0] >= 0.8 * least, times[-1] - times[0]
    await flood.close()
    await calm.close()


async def test_reconnects_when_the_port_reopens(contexts: ContextServer, tmp_path: Path) -> None:
    port = await guest(contexts, tmp_path, UUID, document())
    assert await port.ask("name") == dump("response_context_single_value")
    await port.close()  # QEMU closed the socket (guest reset, agent-side reconnect)
    port.path.unlink()
    again = GuestPort(port.path)
    await again.listen()
    await asyncio.wait_for(again.connected.wait(), 5)
    assert await again.ask("name") == dump("response_context_single_value")
    await again.close()
