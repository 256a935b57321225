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
Event       {"event": "domain.lifecycle", "params": {"uuid", "name", "state", "reason"}}
            pushed for every libvirt lifecycle event of this agent's domains. `state` is a
            CloudSigma server status: "running" (started, resumed), "stopped" (stopped;
            `reason` = shutdown|destroyed|crashed|failed|…), "stopping" (guest finished its
            shutdown, QEMU is exiting), "paused" (suspended, crashed, pmsuspended), or null
            for configuration-only events (`reason` "defined" / "undefined").

Configuration (flags; `--config FILE` gives the same keys in JSON or TOML, flags win)
    --uri URI                  libvirt URI (qemu:///system)
    --virt-type kvm|qemu       domain type (kvm when the host's capabilities offer it)
    --pool NAME=PATH           repeatable; the first is the default pool
                               (default=/var/lib/strato/pool). Each becomes a libvirt `dir`
                               pool named PREFIX+NAME, defined, active and autostarted.
    --cores-per-numa-node N    NUMA cell size for enable_numa (host's largest cell)
    --prefix STR               domain and pool name prefix (strato-); several agents may share
                               one libvirtd with different prefixes
    --console-log-dir DIR      serial console logs, DIR/<domain name>.log
    --socket-dir DIR           serial unix sockets, DIR/<server uuid>.console|.context
                               (keep it short: unix socket paths are limited to 107 bytes)
    --vxlan-local ADDRESS      this host's VXLAN endpoint (underlay address); without it VLAN
                               networks stay on this host
    --vxlan-port N             its UDP port (4789); peers may use other ports

Methods (params → result). `pool` is optional everywhere (the default pool); sizes in bytes.
    ping                                  → {"pong": true}
    host.facts                            → {"hostname", "cores", "mhz" (per core), "memory",
                                             "numa_cells": [{"id", "cpus": [int], "memory"}],
                                             "cores_per_numa_node", "virt_types": [str],
                                             "virt_type", "uri", "pools": [{"name", "path",
                                             "capacity", "allocation", "available"}],
                                             "vxlan": {"address", "port"} | null}
    volume.create {pool?, name, size}     → VOLUME = {"pool", "name", "path", "capacity", "format"}
    volume.import {pool?, name, source_path}
                                          → VOLUME; source raw or qcow2 (detected from content),
                                            stored as qcow2, capacity = virtual size
    volume.clone {pool?, source, name, size?}
                                          → VOLUME (libvirt clone, then grown to size)
    volume.resize {pool?, name, size}     → VOLUME (grow only; smaller → invalid)
    volume.delete {pool?, name}           → {}
    volume.list {pool?}                   → [VOLUME]
    domain.render {server}                → {"xml"} (no libvirt call)
    domain.start {server}                 → DOMAIN = {"uuid", "name", "state", "active_since",
                                             "vnc": {"host", "port"} | null, "console_log",
                                             "console_socket" (ttyS0's unix socket)}
                                            defines (persistently, replacing a stopped
                                            definition) and starts; a bad spec is refused
                                            before anything is defined
    domain.stop {uuid}                    → {} (virDomainDestroy)
    domain.shutdown {uuid}                → {} (one ACPI power-button press; repeat it)
    domain.reset {uuid}                   → {}
    domain.undefine {uuid}                → {} (destroys first if running; volumes stay)
    domain.list                           → [DOMAIN] of this agent's domains (by prefix)
    domain.stats {uuids?}                 → {uuid: {"active_since",
                                             "drives": {drive uuid: {"io": {bytes_read,
                                               bytes_written, count_read, count_written,
                                               count_flush, total_time_ns_read,
                                               total_time_ns_write, total_time_ns_flush}}},
                                             "nics": {mac: {"io": {bytes_recv, bytes_sent,
                                               packets_recv, packets_sent}, "ip_v4": str|null}}}}
                                            (running domains when uuids is omitted; NIC
                                            counters are the guest's view and stay 0 for
                                            user-mode NICs, which have no host interface;
                                            ip_v4 is the DHCP lease the NIC's libvirt network
                                            gave its MAC, null without one)
    domain.xml {uuid}                     → {"xml"} (live XML)
    Unknown uuids → `notfound`.
    network.ensure {network: NETWORK}     → {"name" (the libvirt network, PREFIX+"net-"+name:
                                             what nics[].network names), "bridge", "kind"}
                                            defines, starts and autostarts it when missing (an
                                            existing definition is kept, so attached guests
                                            stay); for an isolated network with a vni, creates
                                            the VXLAN device, enslaves it and sets its flood
                                            list to `peers` (idempotent, stale peers removed)
    network.reserve {network, mac, ip}    → {"pushed": bool} DHCP reservation MAC → IP on a
                                            nat network (virNetworkUpdate, live + config; an
                                            older entry of that MAC or IP is replaced);
                                            pushed=false on an operator's bridge
    network.release {network, mac}        → {} the MAC's reservation removed (none: no-op)
    network.remove {network}              → {} destroyed, undefined, VXLAN device deleted
    network.list                          → [{"name" (libvirt's), "bridge", "active",
                                             "hosts": [{"mac", "ip"}]}] of this agent's networks
    `network` in reserve/release/remove is Strato's name (without PREFIX+"net-").

NETWORK = {"name": [A-Za-z0-9._-]+, "kind": "nat"|"bridge"|"isolated",
           "address": gateway (nat), "prefix": int (nat), "bridge": operator bridge (bridge),
           "vni": int|null (isolated), "peers": [{"address", "port"}] (other hosts' VXLAN
           endpoints; this host's own is skipped)}. Policy: `agents/networks.py`.

The `server` object (every key present):
    {"uuid", "name", "cpu" (MHz, whole server), "mem" (bytes), "smp", "cpus_instead_of_cores",
     "enable_numa", "hv_relaxed", "hv_tsc", "cpu_model": null|"kvm64", "vnc_password",
     "context", "drives": [{"uuid", "pool": str|null, "volume", "media": "disk"|"cdrom",
     "device": "virtio"|"ide"|"scsi", "dev_channel": "C:U", "boot_order": int|null}],
     "nics": [{"mac", "model": "virtio"|"e1000"|"rtl8139", "network": str|null,
               "boot_order": int|null}]}
    `network` is a libvirt network name (as network.ensure returns it); null is a user-mode
    NIC (no host bridge, no address from Strato).
    How it becomes libvirt XML is described in `agents/translate.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import libvirt

from agents.domains import Domains
from agents.errors import AgentError
from agents.host import AgentConfig, HostFacts
from agents.networks import Networks
from agents.storage import Storage

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024 * 1024  # a server with a thousand drives still fits in one line
_NOTFOUND_CODES = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL,
                   libvirt.VIR_ERR_NO_NETWORK}

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class LineReader(Protocol):
    async def readline(self) -> bytes: ...


class LineWriter(Protocol):
    def write(self, data: bytes) -> Any: ...

    async def drain(self) -> None: ...


class Agent:
    """The method table: each wire method maps to one blocking call run in a thread."""

    def __init__(self, config: AgentConfig, facts: HostFacts, storage: Storage, domains: Domains,
                 networks: Networks | None = None) -> None:
        self.config = config
        self.facts = facts
        self.storage = storage
        self.domains = domains
        self.networks = networks or Networks(domains.conn, config.prefix, None)
        nets = self.networks
        self.methods: dict[str, Handler] = {
            "ping": self._ping,
            "host.facts": self._host_facts,
            "volume.create": _blocking(lambda p: storage.create(_opt(p, "pool"), _req(p, "name"), _req(p, "size"))),
            "volume.import": _blocking(
                lambda p: storage.import_(_opt(p, "pool"), _req(p, "name"), _req(p, "source_path", str))),
            "volume.clone": _blocking(lambda p: storage.clone(
                _opt(p, "pool"), _req(p, "source"), _req(p, "name"), _opt(p, "size"))),
            "volume.resize": _blocking(lambda p: storage.resize(_opt(p, "pool"), _req(p, "name"), _req(p, "size"))),
            "volume.delete": _blocking(lambda p: storage.delete(_opt(p, "pool"), _req(p, "name"))),
            "volume.list": _blocking(lambda p: storage.list(_opt(p, "pool"))),
            "domain.render": _blocking(lambda p: domains.render(_req(p, "server", dict))),
            "domain.start": _blocking(lambda p: domains.start(_req(p, "server", dict))),
            "domain.stop": _blocking(lambda p: domains.stop(_req(p, "uuid", str))),
            "domain.shutdown": _blocking(lambda p: domains.shutdown(_req(p, "uuid", str))),
            "domain.reset": _blocking(lambda p: domains.reset(_req(p, "uuid", str))),
            "domain.undefine": _blocking(lambda p: domains.undefine(_req(p, "uuid", str))),
            "domain.list": _blocking(lambda p: domains.list()),
            "domain.stats": _blocking(lambda p: domains.stats(_opt(p, "uuids"))),
            "domain.xml": _blocking(lambda p: domains.xml(_req(p, "uuid", str))),
            "network.ensure": _blocking(lambda p: nets.ensure(_req(p, "network", dict))),
            "network.reserve": _blocking(lambda p: nets.reserve(_req(p, "network", str), _req(p, "mac", str),
                                                               _req(p, "ip", str))),
            "network.release": _blocking(lambda p: nets.release(_req(p, "network", str), _req(p, "mac", str))),
            "network.remove": _blocking(lambda p: nets.remove(_req(p, "network", str))),
            "network.list": _blocking(lambda p: nets.list()),
        }

    async def _ping(self, _params: dict[str, Any]) -> Any:
        return {"pong": True}

    async def _host_facts(self, _params: dict[str, Any]) -> Any:
        pools = await asyncio.to_thread(self.storage.pool_facts)
        return {
            **self.facts.to_wire(),
            "cores_per_numa_node": self.domains.host.cores_per_numa_node,
            "virt_type": self.domains.host.virt_type,
            "uri": self.config.uri,
            "pools": pools,
            "vxlan": self.networks.facts(),
        }

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
            return {"id": req_id, "result": await handler(params)}
        except AgentError as err:
            return {"id": req_id, "error": err.to_wire()}
        except libvirt.libvirtError as err:
            code = err.get_error_code()
            kind = "notfound" if code in _NOTFOUND_CODES else "libvirt"
            return {"id": req_id, "error": {"kind": kind, "message": str(err), "code": code}}
        except Exception as err:
            log.exception("request %r failed", req_id)
            return {"id": req_id, "error": {"kind": "internal", "message": repr(err), "code": None}}


def _blocking(call: Callable[[dict[str, Any]], Any]) -> Handler:
    async def run(params: dict[str, Any]) -> Any:
        return await asyncio.to_thread(call, params)

    return run


def _req(params: dict[str, Any], key: str, kind: type | None = None) -> Any:
    if key not in params:
        raise AgentError("invalid", f"params.{key}: missing")
    value = params[key]
    if kind is not None and not isinstance(value, kind):
        raise AgentError("invalid", f"params.{key}: expected {kind.__name__}")
    return value


def _opt(params: dict[str, Any], key: str) -> Any:
    return params.get(key)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


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
