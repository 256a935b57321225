"""`agent --stdio`: configuration, libvirt connection and the stdio transport.

The protocol and every option are documented in `agents/protocol.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tomllib
from dataclasses import fields, replace
from typing import Any

import libvirt
import libvirtaio

from agents import wire
from agents.domains import Domains
from agents.errors import AgentError
from agents.host import AgentConfig, HostFacts
from agents.networks import Networks
from agents.protocol import MAX_LINE, Agent, LineReader, LineWriter, encode, serve
from agents.rbd import RbdPoolConfig
from agents.storage import PoolConfig, Storage
from agents.translate import HostPolicy

log = logging.getLogger("agents")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agent", description="Strato host agent (see agents/protocol.py)")
    parser.add_argument("--stdio", action="store_true", help="speak newline-delimited JSON-RPC on stdin/stdout")
    parser.add_argument("--config", help="JSON or TOML file with the same keys as the flags")
    parser.add_argument("--uri")
    parser.add_argument("--virt-type", choices=("kvm", "qemu"))
    parser.add_argument("--pool", action="append", metavar="NAME=PATH")
    parser.add_argument("--rbd-pool", action="append",
                        metavar="name=NAME,pool=CEPHPOOL,user=ID,keyring=FILE,mon=HOST:PORT[,mon=...]")
    parser.add_argument("--cores-per-numa-node", type=int)
    parser.add_argument("--prefix")
    parser.add_argument("--console-log-dir")
    parser.add_argument("--socket-dir")
    parser.add_argument("--vxlan-local", metavar="ADDRESS")
    parser.add_argument("--vxlan-port", type=int)
    parser.add_argument("--migrate-uri", metavar="URI", help="this libvirtd as other hosts reach it")
    parser.add_argument("--migrate-address", metavar="ADDRESS", help="this host's address for migration streams")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> AgentConfig:
    """Defaults, then the config file, then flags (flags win)."""
    values: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as f:
            raw = f.read()
        data = tomllib.loads(raw.decode()) if args.config.endswith(".toml") else json.loads(raw)
        values.update({k.replace("-", "_"): v for k, v in data.items()})
    for f in fields(AgentConfig):
        flag = getattr(args, f.name, None)
        if flag is not None:
            values[f.name] = flag
    known = {f.name for f in fields(AgentConfig)}
    unknown = set(values) - known
    if unknown:
        raise SystemExit(f"agent: unknown configuration keys: {', '.join(sorted(unknown))}")
    if "pools" in values:
        values["pools"] = tuple(_pool(p) for p in values["pools"])
    if "rbd_pools" in values:
        values["rbd_pools"] = tuple(_rbd_pool(p) for p in values["rbd_pools"])
    return replace(AgentConfig(), **values)


def _pool(spec: Any) -> PoolConfig:
    if isinstance(spec, dict):
        return PoolConfig(str(spec["name"]), os.path.abspath(str(spec["path"])))
    name, sep, path = str(spec).partition("=")
    if not sep or not name or not path:
        raise SystemExit(f"agent: --pool wants NAME=PATH, got {spec!r}")
    return PoolConfig(name, os.path.abspath(path))


def _rbd_pool(spec: Any) -> RbdPoolConfig:
    """A config file's object, or the flag's ``key=value,…`` (``mon=`` repeated per monitor)."""
    if isinstance(spec, dict):
        values = dict(spec)
    else:
        values, monitors = {}, []
        for item in str(spec).split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"agent: --rbd-pool wants key=value items, got {item!r}")
            if key == "mon":
                monitors.append(value)
            else:
                values[key] = value
        values["monitors"] = monitors
    try:
        return RbdPoolConfig(name=str(values["name"]), pool=str(values["pool"]), user=str(values["user"]),
                             keyring=os.path.abspath(str(values["keyring"])),
                             monitors=tuple(str(m) for m in values["monitors"]),
                             timeout=int(values.get("timeout", 30)), retry=int(values.get("retry", 30)))
    except (KeyError, ValueError) as err:
        raise SystemExit(f"agent: rbd pool {spec!r}: missing or bad {err}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # --pool maps to the `pools` key, --rbd-pool to `rbd_pools`.
    args.pools = args.pool
    args.rbd_pools = args.rbd_pool
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s agent[%(process)d] %(levelname)s %(name)s: %(message)s")
    if not args.stdio:
        print("agent: only --stdio is supported", file=sys.stderr)
        return 2
    config = load_config(args)
    try:
        return asyncio.run(run_stdio(config))
    except KeyboardInterrupt:
        return 130
    except AgentError as err:  # libvirtd unreachable, or a host this agent must not run on as configured
        log.error("refusing to start: %s", err.message)
        return 1


async def run_stdio(config: AgentConfig) -> int:
    """Serve until stdin ends (0), or until libvirtd closes the connection (1): a connection that
    died stays dead, so the agent exits and whoever runs it starts a fresh one (the API node does,
    with backoff), which waits for libvirtd to be back."""
    loop = asyncio.get_running_loop()
    reader, writer = await _stdio_streams(loop)
    # Opened on the loop thread: libvirtaio registers the connection's socket with this loop.
    try:
        agent, conn = _open(config, loop)
    except AgentError:
        await asyncio.sleep(0.1)  # libvirtaio removes the closed connection's handles on this loop
        raise
    agent.domains.watch(lambda name, params: writer.write(encode({"event": name, "params": params})))
    agent.serve_running_contexts()
    closed = asyncio.Event()
    why: list[str] = []

    def on_close(_conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        why.append(_CLOSE_REASONS.get(reason, f"reason {reason}"))
        closed.set()

    conn.registerCloseCallback(on_close, None)
    log.info("ready: uri=%s virt_type=%s prefix=%s", config.uri, agent.domains.host.virt_type, config.prefix)
    serving = asyncio.create_task(serve(agent, reader, writer))
    lost = asyncio.create_task(closed.wait())
    reaching = asyncio.create_task(_reach_rbd_pools(agent.storage))
    try:
        await asyncio.wait({serving, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not serving.done():
            log.error("the libvirt connection to %s closed (%s): exiting", config.uri, why[0] if why else "?")
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            return 1
        serving.result()
        return 0
    finally:
        lost.cancel()
        reaching.cancel()
        await agent.contexts.close()
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
        await asyncio.sleep(0.1)  # libvirtaio removes the closed connection's handles on this loop


async def _reach_rbd_pools(storage: Storage) -> None:
    """RBD pools whose Ceph cluster did not answer when the agent started, tried again every
    ``retry`` seconds until each is reached: the cluster coming back is enough, no restart.  A pool
    reached is in the host's facts from then on, so the API node's next poll lets it place drives
    there; until then the facts list it as unreachable (``strato doctor`` says why)."""
    waiting = [rbd for rbd in storage.rbd.values() if not rbd.active]
    while waiting:
        await asyncio.sleep(min(rbd.config.retry for rbd in waiting))
        for rbd in waiting:
            try:
                conflict = await asyncio.to_thread(rbd.ensure)
            except (AgentError, libvirt.libvirtError) as err:
                log.warning("rbd pool %s: still not ready: %s", rbd.config.name, err)
                continue
            if conflict is not None:
                log.error("rbd pool %s: %s", rbd.config.name, conflict)
            elif rbd.active:
                log.info("rbd pool %s: its Ceph cluster answers now; the pool is in use", rbd.config.name)
        waiting = [rbd for rbd in waiting if not rbd.active]


_CLOSE_REASONS = {libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "an error", libvirt.VIR_CONNECT_CLOSE_REASON_EOF:
                  "libvirtd went away", libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "libvirtd stopped answering",
                  libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the agent"}


class _FileReader:
    """stdin that is a regular file (asyncio pipes refuse those): read in a thread."""

    async def readline(self) -> bytes:
        return await asyncio.to_thread(sys.stdin.buffer.readline, MAX_LINE)


class _FileWriter:
    """stdout that is a regular file: writes never wait, so write directly."""

    def write(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    async def drain(self) -> None:
        return None


async def _stdio_streams(loop: asyncio.AbstractEventLoop) -> tuple[LineReader, LineWriter]:
    reader: LineReader
    writer: LineWriter
    try:
        stream = asyncio.StreamReader(limit=MAX_LINE)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), sys.stdin.buffer)
        reader = stream
    except ValueError:
        reader = _FileReader()
    try:
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
    except ValueError:
        writer = _FileWriter()
    return reader, writer


def _open(config: AgentConfig, loop: asyncio.AbstractEventLoop) -> tuple[Agent, libvirt.virConnect]:
    # libvirt's event loop must be the asyncio one before the connection opens, so lifecycle
    # events and keep-alives arrive without a polling thread.
    libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    # libvirt prints every error to stderr by default; errors reach the caller as responses.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(config.uri)
    except libvirt.libvirtError as err:
        raise AgentError("libvirt", f"cannot connect to libvirtd at {config.uri}: {err}") from None
    conn.setKeepAlive(5, 3)
    facts = HostFacts.read(conn)
    policy = HostPolicy(
        virt_type=facts.pick_virt_type(config.virt_type),
        mhz_per_core=facts.mhz,
        cores_per_numa_node=facts.cores_per_numa_node(config.cores_per_numa_node),
        prefix=config.prefix,
        console_log_dir=os.path.abspath(config.console_log_dir),
        socket_dir=os.path.abspath(config.socket_dir),
    )
    storage = Storage(conn, config.prefix, list(config.pools), list(config.rbd_pools))
    try:
        storage.ensure_pools()
    except (AgentError, libvirt.libvirtError) as err:
        conn.close()  # before the loop ends: libvirtaio's handles go with the connection
        if isinstance(err, AgentError):
            raise
        raise AgentError("libvirt", f"the storage pools cannot be made ready: {err}") from None
    for directory in (policy.console_log_dir, policy.socket_dir):
        os.makedirs(directory, exist_ok=True)
    vxlan = wire.VxlanEndpoint(address=config.vxlan_local, port=config.vxlan_port) if config.vxlan_local else None
    networks = Networks(conn, config.prefix, vxlan)
    return Agent(config, facts, storage, Domains(conn, policy, storage, networks), networks), conn


if __name__ == "__main__":
    sys.exit(main())
