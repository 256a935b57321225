"""One agent connection per host: a local subprocess or an SSH exec channel (DESIGN.md "Transport").

Both speak the same newline-delimited JSON-RPC through :class:`agents.client.AgentClient`.
A connection keeps itself alive: it heartbeats, and when the agent goes away it reports the
host down and reconnects with exponential backoff, reporting it up again (with fresh facts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncssh
from tenacity import AsyncRetrying, RetryCallState, retry_if_not_exception_type, wait_exponential

from agents.client import AgentClient, AgentGone

log = logging.getLogger(__name__)

Event = dict[str, Any]


@dataclass(frozen=True)
class HostAddress:
    name: str
    address: str                      # "local" or "ssh://user@host:port"
    agent_command: tuple[str, ...]    # argv of `agent --stdio`
    key_file: str | None = None
    known_hosts: str | None = None

    @property
    def is_local(self) -> bool:
        return self.address == "local"


class Listener:
    """What a connection tells the rest of the API node."""

    async def host_up(self, host: str, facts: dict[str, Any]) -> None: ...
    async def host_down(self, host: str) -> None: ...
    async def agent_event(self, host: str, event: Event) -> None: ...


class AgentConnection:
    def __init__(self, address: HostAddress, listener: Listener, *, heartbeat: float = 5.0,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.address = address
        self.listener = listener
        self.heartbeat = heartbeat
        self.backoff = backoff
        self.client: AgentClient | None = None
        self.up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._close: Callable[[], Awaitable[None]] | None = None
        self.ssh: asyncssh.SSHClientConnection | None = None  # remote hosts: also carries VNC tunnels

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"agent:{self.address.name}")

    async def call(self, method: str, timeout: float = 120.0, **params: Any) -> Any:
        """One RPC; waits (briefly) for the host to be connected."""
        try:
            await asyncio.wait_for(self.up.wait(), timeout=10)
        except TimeoutError:
            raise AgentGone(f"host {self.address.name} is not connected") from None
        assert self.client is not None
        return await self.client.call(method, timeout=timeout, **params)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()

    async def _run(self) -> None:
        while True:
            await self._reconnect()
            try:
                facts = await self.client.call("host.facts", timeout=60)  # type: ignore[union-attr]
                self.up.set()
                await self.listener.host_up(self.address.name, facts)
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the agent or the channel failed: reconnect
                log.warning("host %s: %s", self.address.name, err)
            if self.up.is_set():
                self.up.clear()
                await self.listener.host_down(self.address.name)
            await self._disconnect()
            await asyncio.sleep(self.backoff[0])

    async def _reconnect(self) -> None:
        """Connect, retrying with exponential backoff (first to last delay of ``backoff``)."""
        first, last = self.backoff
        async for attempt in AsyncRetrying(wait=wait_exponential(multiplier=first, min=first, max=last),
                                           retry=retry_if_not_exception_type(asyncio.CancelledError),
                                           before_sleep=self._failed_attempt):
            with attempt:
                try:
                    await self._connect()
                except BaseException:
                    await self._disconnect()
                    raise

    def _failed_attempt(self, state: RetryCallState) -> None:
        log.warning("host %s: %s", self.address.name, state.outcome.exception() if state.outcome else "?")

    async def _beat(self) -> None:
        while True:
            await self.client.call("ping", timeout=max(self.heartbeat * 2, 10))  # type: ignore[union-attr]
            await asyncio.sleep(self.heartbeat)

    def _on_event(self, event: Event) -> None:
        asyncio.get_running_loop().create_task(self.listener.agent_event(self.address.name, event))

    async def _connect(self) -> None:
        if self.address.is_local:
            proc = await asyncio.create_subprocess_exec(
                *self.address.agent_command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=32 * 1024 * 1024)
            assert proc.stdin is not None and proc.stdout is not None
            self.client = AgentClient(proc.stdout, proc.stdin, on_event=self._on_event)

            async def close() -> None:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

            self._close = close
            return
        url = urlsplit(self.address.address)
        options: dict[str, Any] = {}
        if self.address.known_hosts:  # otherwise asyncssh checks the user's ~/.ssh/known_hosts
            options["known_hosts"] = self.address.known_hosts
        if self.address.key_file:
            options["client_keys"] = [self.address.key_file]
        conn = await asyncssh.connect(url.hostname, port=url.port or 22, username=url.username,
                                      keepalive_interval=self.heartbeat, **options)
        process = await conn.create_process(shlex.join(self.address.agent_command), encoding=None)
        self.client = AgentClient(process.stdout, process.stdin, on_event=self._on_event)
        self.ssh = conn

        async def close_ssh() -> None:
            self.ssh = None
            process.close()
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()

        self._close = close_ssh

    async def _disconnect(self) -> None:
        client, close = self.client, self._close
        self.client, self._close = None, None
        if client is not None:
            await client.close()
        if close is not None:
            await close()
