"""An asyncio client for the agent protocol (`agents/protocol.py`, messages in `agents/wire.py`).

Transport-agnostic: it needs a reader with `async readline()` and a writer with `write()` and
`async drain()`, which is what both an asyncio subprocess's pipes and an asyncssh process's
stdout/stdin offer (bytes or str).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from agents import wire

log = logging.getLogger(__name__)

Event = dict[str, Any]


class _Reader(Protocol):
    async def readline(self) -> bytes | str: ...


class _Writer(Protocol):
    def write(self, data: Any) -> Any: ...

    async def drain(self) -> None: ...


class AgentCallError(Exception):
    """An error response: `kind` is invalid|notfound|libvirt|internal, `code` libvirt's."""

    def __init__(self, kind: str, message: str, code: int | None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.code = code


class AgentGone(ConnectionError):
    """The agent's output ended (process exited or the channel closed)."""


class EventStream:
    """Events pushed after `AgentClient.subscribe()`; iterate it or `await get(timeout)`."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def _put(self, event: Event | None) -> None:
        self._queue.put_nowait(event)

    async def get(self, timeout: float | None = None) -> Event:
        event = await asyncio.wait_for(self._queue.get(), timeout)
        if event is None:
            raise AgentGone("agent closed")
        return event

    async def wait_for(self, match: Callable[[Event], bool], timeout: float) -> Event:
        """The first event `match` accepts (others are dropped), within `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.get()
                if match(event):
                    return event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.get()
            except AgentGone:
                return

    def close(self) -> None:
        self._client._streams.discard(self)


class AgentClient:
    def __init__(self, reader: _Reader, writer: _Writer,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: set[EventStream] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed: BaseException | None = None

    def _ensure_reading(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._read_loop())

    async def call(self, method: str, params: wire.Message | None = None, /, *, timeout: float | None = None,
                   **fields: Any) -> Any:
        """Send one request and wait for its (decoded JSON) result; errors raise `AgentCallError`.

        Params are either the method's Struct (`call("domain.start", wire.DomainSpec(server=s))`)
        or keyword fields whose values are JSON values or Structs (`call("domain.start",
        server=s)` with `s` a dict or a `wire.Server`); both encode to the same bytes.
        """
        if params is not None:
            kind = wire.METHODS[method].params
            if fields or not isinstance(params, kind):
                raise TypeError(f"{method} takes one {kind.__name__} or keyword fields")
        body: Any = params if params is not None else fields
        self._ensure_reading()
        if self._closed is not None:
            raise AgentGone("agent closed") from self._closed
        req_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            await self.send_raw(json.dumps({"id": req_id, "method": method, "params": body},
                                           default=wire.to_builtins))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(req_id, None)

    async def send_raw(self, line: str) -> None:
        """Write one line as is (tests use it to send malformed input)."""
        data = (line + "\n").encode()
        try:
            self._writer.write(data)
        except TypeError:  # a text-mode channel (asyncssh with an encoding)
            self._writer.write(data.decode())
        await self._writer.drain()

    async def read_raw(self, req_id: Any, timeout: float) -> dict[str, Any]:
        """Wait for the response with an id this client did not send itself (e.g. null)."""
        self._ensure_reading()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(req_id, None)

    def subscribe(self) -> EventStream:
        self._ensure_reading()
        stream = EventStream(self)
        self._streams.add(stream)
        return stream

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("agent sent a line that is not JSON: %r", line[:200])
                    continue
                self._dispatch(message)
        except Exception as err:  # the channel broke: every waiter learns it below
            self._closed = err
        finally:
            self._closed = self._closed or AgentGone("agent output ended")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(AgentGone("agent output ended"))
            for stream in self._streams:
                stream._put(None)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "event" in message:
            if self._on_event is not None:
                self._on_event(message)
            for stream in self._streams:
                stream._put(message)
            return
        future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if future is None or future.done():
            log.warning("response for an unknown request: %r", message)
            return
        if "error" in message:
            if message.get("id") is None:  # raw readers want the whole error
                future.set_result(message)
                return
            err = message["error"]
            future.set_exception(AgentCallError(err.get("kind", "internal"), err.get("message", ""),
                                                err.get("code")))
        else:
            future.set_result(message.get("result"))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
