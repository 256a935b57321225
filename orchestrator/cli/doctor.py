"""``strato doctor``: what each registered host needs to run guests, and what to fix (issue 11).

Per host: its agent starts and reaches libvirtd (the agent's own refusal, e.g. a pool another
installation defined, is printed above by the agent), the virt type, each pool's free space; on
this machine also whether QEMU's user can traverse the pool and console directories.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from agents.client import AgentCallError, AgentGone
from orchestrator.config import Config
from orchestrator.db.engine import make_engine, make_sessionmaker, migrate
from orchestrator.db.models import Host
from orchestrator.hosts.connection import AgentConnection, HostAddress, Listener
from orchestrator.hosts.registry import agent_dirs, ensure_local_host, qemu_cannot_reach

MIN_FREE = 1 << 30  # a pool with less cannot take one more small drive


@dataclass(frozen=True)
class Finding:
    host: str
    ok: bool
    text: str

    def __str__(self) -> str:
        return f"{self.host}: {'ok ' if self.ok else 'FIX'} {self.text}"


class _Quiet(Listener):
    """This connection only asks for facts: host events are the running API node's business."""


async def diagnose(config: Config, only: str | None = None) -> list[Finding]:
    engine = make_engine(config.db_url)
    try:
        await migrate(engine)
        async with make_sessionmaker(engine).begin() as s:
            if config.local_host:
                await ensure_local_host(s, config)
            query = select(Host).order_by(Host.name)
            hosts = (await s.scalars(query.where(Host.name == only) if only else query)).all()
    finally:
        await engine.dispose()
    if not hosts:
        return [Finding(only or "-", False, f"no host {only}" if only else "no host registered (strato hosts add)")]
    findings = []
    for host in hosts:
        findings += await _host(config, host)
    return findings


async def _host(config: Config, host: Host) -> list[Finding]:
    found = []
    if host.address == "local":
        for flag, directory in agent_dirs(host):
            why = qemu_cannot_reach(directory)
            found.append(Finding(host.name, why is None, f"{why}: chmod o+x that directory, or move {flag} elsewhere"
                                 if why else f"QEMU's user can traverse {directory} ({flag})"))
    connection = AgentConnection(HostAddress(host.name, host.address, tuple(host.agent_command), host.key_file,
                                             host.known_hosts), _Quiet(), heartbeat=config.heartbeat)
    connection.start()
    try:
        facts = await connection.call("host.facts", timeout=30)
    except (AgentGone, AgentCallError, TimeoutError) as err:
        found.append(Finding(host.name, False, f"its agent did not answer ({err}); the agent's own message, if "
                             "any, is above; check libvirtd (systemctl status libvirtd) and the agent command"))
        return found
    finally:
        await connection.stop()
    found.append(Finding(host.name, True, f"agent up, libvirt {facts['uri']}, virt type {facts['virt_type']}"))
    if facts["virt_type"] != "kvm":  # a note, not a fault: tests and nested hosts choose it
        found.append(Finding(host.name, True, "software emulation (qemu): guests run slowly; " + (
            "KVM is offered too (local_virt_type, --virt-type)" if "kvm" in facts["virt_types"]
            else "this host offers no KVM (/dev/kvm)")))
    for pool in facts["pools"]:
        enough = pool["available"] >= MIN_FREE
        found.append(Finding(host.name, enough, f"pool {pool['name']} at {pool['path']}: "
                             f"{pool['available'] >> 20} MiB free" + ("" if enough else ", free some space")))
    for name in facts.get("unreachable_pools", []):
        found.append(Finding(host.name, False, f"rbd pool {name}: its Ceph cluster did not answer when the agent "
                             "started (monitors, key, network; see deploy/ceph.md): restart the agent once it does"))
    return found
