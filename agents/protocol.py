"""The agent's wire protocol: the one place it is specified.

Transport
    `agent --stdio` reads newline-delimited JSON (UTF-8, one object per line) on stdin and
    writes newline-delimited JSON on stdout; logs go to stderr only. The API node runs it as a
    local subprocess or over an SSH exec channel; the bytes are the same. Requests are handled
    concurrently (blocking libvirt calls run in threads), so responses may come back in any
    order: match them by `id`. The agent never exits on bad input; it exits when stdin closes.

Request     {"id": <int|str>, "method": "<name>", "params": {...}}     (params may be omitted)
Response    {"id": ..., "result": <any>}
            {"id": ..., "error": {"kind": K, "message": str, "code": <libvirt error code|null>}}
            K = "invalid"   the request or its params are wrong (nothing was changed)
                "notfound"  no such domain / volume / pool / file
                "libvirt"   libvirt refused; `code` is its virErrorNumber
                "internal"  anything else (a tool failed, a bug)
            A line that is not a JSON object gets an `invalid` error with "id": null.
Event       {"event": "<name>", "params": {...}}   pushed, never answered (`wire.EVENTS`)

Messages: `agents/wire.py` is their one definition. `wire.METHODS` maps each method to the
Struct its params are converted into (unknown keys ignored; a missing or ill-typed value is
an `invalid` error naming its path, e.g. "params.server.drives.0: ...") and to its result
type; `wire.EVENTS` does the same for events.

Configuration (flags; `--config FILE` gives the same keys in JSON or TOML, flags win)
    --uri URI                  libvirt URI (qemu:///system)
    --virt-type kvm|qemu       domain type (kvm when the host's capabilities offer it)
    --pool NAME=PATH           repeatable; the first is the default pool
                               (default=/var/lib/strato/pool). Each becomes a libvirt `dir`
                               pool named PREFIX+NAME, defined, active and autostarted.
    --rbd-pool name=NAME,pool=CEPHPOOL,user=ID,keyring=FILE,mon=HOST:PORT[,mon=…][,timeout=S]
                               repeatable; a Ceph RBD pool as libvirt `rbd` pool PREFIX+NAME,
                               its cephx key (read from the keyring's [client.ID] section) in a
                               libvirt secret of usage PREFIX+NAME. A cluster it cannot reach in
                               S seconds (30) leaves the pool out of host.facts; the agent runs.
                               In a config file: "rbd_pools": [{"name": …, "pool": …, "user": …,
                               "keyring": …, "monitors": ["HOST:PORT", …], "timeout": S}]
    --cores-per-numa-node N    NUMA cell size for enable_numa (host's largest cell)
    --prefix STR               domain and pool name prefix (strato-); several agents may share
                               one libvirtd with different prefixes
    --console-log-dir DIR      serial console logs, DIR/<domain name>.log
    --socket-dir DIR           serial unix sockets, DIR/<server uuid>.console|.context
                               (keep it short: unix socket paths are limited to 107 bytes)
    --vxlan-local ADDRESS      this host's VXLAN endpoint (underlay address); without it VLAN
                               networks stay on this host
    --vxlan-port N             its UDP port (4789); peers may use other ports
    --migrate-uri URI          this libvirtd as other hosts' libvirtd reach it for peer-to-peer
                               live migration (qemu+ssh://root@ADDRESS/system, qemu+tcp://…);
                               without it the host takes no live migrations
    --migrate-address ADDRESS  where QEMU streams a migration (and copy-storage) to this host

Live migration (`migrate.*`): the API node asks the target to `migrate.prepare` (render the
domain with its names and paths, create the volumes copy-storage fills), the source to
`migrate.out` (peer to peer; blocks until done, the domain runs on at the source on failure),
then the target `migrate.done` (serve the context port, describe the domain), or `migrate.abort`
after a failure (remove what prepare created).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import libvirt
import msgspec

from agents import migration, wire
from agents.context import ContextServer
from agents.domains import Domains
from agents.errors import AgentError
from agents.host import AgentConfig, HostFacts
from agents.networks import Networks
from agents.storage import Storage
from agents.translate import context_socket_path

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024 * 1024  # a server with a thousand drives still fits in one line
_NOTFOUND_CODES = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL,
                   libvirt.VIR_ERR_NO_NETWORK}

Handler = Callable[[Any], Awaitable[Any]]  # called with the method's params Struct


class LineReader(Protocol):
    async def readline(self) -> bytes: ...


class LineWriter(Protocol):
    def write(self, data: bytes) -> Any: ...

    async def drain(self) -> None: ...


class Agent:
    """The method table: each wire method maps to one blocking call run in a thread."""

    def __init__(self, config: AgentConfig, facts: HostFacts, storage: Storage, domains: Domains,
                 networks: Networks | None = None, contexts: ContextServer | None = None) -> None:
        self.config = config
        self.contexts = contexts or ContextServer()
        self.facts = facts
        self.storage = storage
        self.domains = domains
        self.networks = networks or Networks(domains.conn, config.prefix, None)
        nets = self.networks
        self.methods: dict[str, Handler] = {
            "ping": self._ping,
            "host.facts": self._host_facts,
            "volume.create": _blocking(lambda p: storage.create(p.pool, p.name, p.size)),
            "volume.import": _blocking(lambda p: storage.import_(p.pool, p.name, p.source_path)),
            "volume.clone": _blocking(lambda p: storage.clone(p.pool, p.source, p.name, p.size)),
            "volume.cow_clone": _blocking(lambda p: storage.cow_clone(p.pool, p.source, p.name, p.base, p.size,
                                                                      p.keep_source)),
            "volume.flatten": _blocking(lambda p: storage.flatten(p.pool, p.name, p.rate)),
            "volume.flatten_cancel": _blocking(lambda p: storage.cancel_flatten(p.pool, p.name)),
            "volume.resize": _blocking(lambda p: storage.resize(p.pool, p.name, p.size)),
            "volume.delete": _blocking(lambda p: storage.delete(p.pool, p.name)),
            "volume.export": _blocking(lambda p: storage.export(p.pool, p.name, p.path)),
            "volume.list": _blocking(lambda p: storage.list(p.pool)),
            "domain.render": _blocking(lambda p: domains.render(p.server)),
            "domain.start": self._domain_start,
            "domain.stop": _blocking(lambda p: domains.stop(p.uuid)),
            "domain.shutdown": _blocking(lambda p: domains.shutdown(p.uuid)),
            "domain.reset": _blocking(lambda p: domains.reset(p.uuid)),
            "domain.undefine": self._domain_undefine,
            "domain.list": _blocking(lambda p: domains.list()),
            "domain.stats": _blocking(lambda p: domains.stats(p.uuids)),
            "domain.xml": _blocking(lambda p: domains.xml(p.uuid)),
            "network.ensure": _blocking(lambda p: nets.ensure(p.network)),
            "network.reserve": _blocking(lambda p: nets.reserve(p.network, p.mac, p.ip)),
            "network.release": _blocking(lambda p: nets.release(p.network, p.mac)),
            "network.remove": _blocking(lambda p: nets.remove(p.network)),
            "network.list": _blocking(lambda p: nets.list()),
            "context.set": self._context_set,
            "migrate.prepare": _blocking(self._migrate_prepare),
            "migrate.out": self._migrate_out,
            "migrate.done": self._migrate_done,
            "migrate.abort": _blocking(self._migrate_abort),
        }
        assert self.methods.keys() == wire.METHODS.keys(), "every wire method has one handler"

    async def _ping(self, _params: wire.NoParams) -> wire.Pong:
        return wire.Pong()

    async def _domain_start(self, params: wire.DomainSpec) -> wire.DomainInfo:
        info = await asyncio.to_thread(self.domains.start, params.server)
        if params.server.context:  # QEMU listens on the port's socket now
            self.contexts.attach(params.server.uuid, context_socket_path(self.domains.host, params.server.uuid))
        return info

    async def _domain_undefine(self, params: wire.DomainRef) -> wire.Empty:
        self.contexts.forget(params.uuid)
        return await asyncio.to_thread(self.domains.undefine, params.uuid)

    def _migrate_prepare(self, params: wire.MigrateIn) -> wire.MigrationTarget:
        if self.config.migrate_uri is None:
            raise AgentError("invalid", "this host takes no live migrations (no --migrate-uri)")
        for volume in params.create:
            self.storage.create(volume.pool, volume.name, volume.size)
        for directory in (self.domains.host.console_log_dir, self.domains.host.socket_dir):
            os.makedirs(directory, exist_ok=True)
        return wire.MigrationTarget(xml=self.domains.render(params.server).xml)

    def _migrate_abort(self, params: wire.MigrateIn) -> wire.Empty:
        """After a failed migration: what prepare created goes (a half-copied volume included)."""
        for volume in params.create:
            with contextlib.suppress(AgentError, libvirt.libvirtError):
                self.storage.delete(volume.pool, volume.name)
        return wire.Empty()

    async def _migrate_out(self, params: wire.MigrateOut) -> wire.Empty:
        dom = await asyncio.to_thread(self.domains.lookup, params.uuid)
        await asyncio.to_thread(migration.migrate, self.domains.conn, dom, params)
        self.contexts.forget(params.uuid)  # the guest's context port is the target's now
        return wire.Empty()

    async def _migrate_done(self, params: wire.MigrateDone) -> wire.DomainInfo:
        if params.context:
            self.contexts.attach(params.uuid, context_socket_path(self.domains.host, params.uuid))
        return await asyncio.to_thread(self.domains.describe, params.uuid)

    async def _context_set(self, params: wire.ContextSet) -> wire.Empty:
        self.contexts.set(params.uuid, params.document)
        return wire.Empty()

    def serve_running_contexts(self) -> None:
        """After a (re)start of the agent: serve the context ports of the domains that run."""
        for info in self.domains.list():
            path = context_socket_path(self.domains.host, info.uuid)
            if info.state == "running" and os.path.exists(path):
                self.contexts.attach(info.uuid, path)

    async def _host_facts(self, _params: wire.NoParams) -> wire.HostFacts:
        pools = await asyncio.to_thread(self.storage.pool_facts)
        facts = self.facts
        return wire.HostFacts(
            hostname=facts.hostname, cores=facts.cores, mhz=facts.mhz, memory=facts.memory,
            numa_cells=[wire.NumaCellFacts(id=c.id, cpus=list(c.cpus), memory=c.memory) for c in facts.numa_cells],
            virt_types=list(facts.virt_types),
            cores_per_numa_node=self.domains.host.cores_per_numa_node,
            virt_type=self.domains.host.virt_type,
            uri=self.config.uri,
            pools=pools,
            vxlan=self.networks.vxlan,
            unreachable_pools=[name for name, rbd in self.storage.rbd.items() if not rbd.active],
            migration=wire.MigrationEndpoint(uri=self.config.migrate_uri, address=self.config.migrate_address)
            if self.config.migrate_uri and self.config.migrate_address else None,
        )

    async def handle(self, line: bytes) -> dict[str, Any]:
        """One request line → one response object (never raises)."""
        req_id: Any = None
        try:
            try:
                request = json.loads(line)
            except (ValueError, UnicodeDecodeError) as err:
                raise AgentError("invalid", f"malformed JSON: {err}") from None
            if not isinstance(request, dict):
                raise AgentError("invalid", "a request must be a JSON object")
            req_id = request.get("id")
            if not isinstance(req_id, int | str) or isinstance(req_id, bool):
                req_id = None
                raise AgentError("invalid", "id: expected an integer or a string")
            method = request.get("method")
            params = request.get("params", {})
            if not isinstance(params, dict):
                raise AgentError("invalid", "params: expected an object")
            handler = self.methods.get(method) if isinstance(method, str) else None
            if handler is None:
                raise AgentError("invalid", f"unknown method {method!r}")
            try:
                typed = wire.convert(params, wire.METHODS[method].params)
            except msgspec.ValidationError as err:
                raise AgentError("invalid", str(err)) from None
            return {"id": req_id, "result": await handler(typed)}
        except AgentError as err:
            return {"id": req_id, "error": err.to_wire()}
        except libvirt.libvirtError as err:
            code = err.get_error_code()
            kind = "notfound" if code in _NOTFOUND_CODES else "libvirt"
            return {"id": req_id, "error": {"kind": kind, "message": str(err), "code": code}}
        except Exception as err:
            log.exception("request %r failed", req_id)
            return {"id": req_id, "error": {"kind": "internal", "message": repr(err), "code": None}}


def _blocking(call: Callable[[Any], Any]) -> Handler:
    async def run(params: Any) -> Any:
        return await asyncio.to_thread(call, params)

    return run


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=wire.to_builtins).encode() + b"\n"


async def serve(agent: Agent, reader: LineReader, writer: LineWriter) -> None:
    """Answer requests from `reader` until it reaches EOF; events go through `push`."""
    tasks: set[asyncio.Task[None]] = set()

    async def answer(line: bytes) -> None:
        writer.write(encode(await agent.handle(line)))
        await writer.drain()

    while True:
        try:
            line = await reader.readline()
        except ValueError:  # longer than MAX_LINE: answer and keep going
            writer.write(encode({"id": None, "error": {"kind": "invalid", "message": "line too long",
                                                       "code": None}}))
            continue
        if not line:
            break
        if not line.strip():
            continue
        task = asyncio.create_task(answer(line))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
