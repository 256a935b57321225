"""Registering hosts: the embedded local default and ``strato hosts add|list|drain|remove``."""

from __future__ import annotations

import grp
import itertools
import pwd
import secrets
import shlex
import stat
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.config import Config
from orchestrator.db.models import Drive, Host, Server

HOST_CONFIG = "/etc/strato/agent.json"  # written by deploy/prepare-host.sh
QEMU_USERS = ("libvirt-qemu", "qemu")  # the user libvirt runs QEMU as: Debian's, Fedora's


async def installation_prefix(s: AsyncSession, config: Config) -> str:
    """The libvirt name prefix of this installation's local agents: the configured one, else the
    one its local hosts were registered with, else a new one.  Two installations on one libvirtd
    thus never share a name, and nothing either agent defines or deletes is the other's."""
    if config.agent_prefix:
        return config.agent_prefix
    for argv in (await s.scalars(select(Host.agent_command).where(Host.address == "local"))).all():
        if "--prefix" in argv[:-1]:
            return argv[argv.index("--prefix") + 1]
    return f"strato-{secrets.token_hex(4)}-"


def local_agent_command(config: Config, prefix: str, name: str = "local", virt_type: str | None = None) -> list[str]:
    data = config.data_dir.resolve()
    command = [sys.executable, "-m", "agents.cli", "--stdio", "--prefix", prefix,
               "--pool", f"default={data / 'pools' / name}", "--console-log-dir", str(data / "console"),
               "--socket-dir", str(data / "sockets"), *rbd_pool_flags(config.rbd_pools)]
    virt_type = virt_type or config.local_virt_type
    if virt_type:
        return [*command, "--virt-type", virt_type]
    # deploy/prepare-host.sh records the host's virt type there.
    return [*command, "--config", HOST_CONFIG] if Path(HOST_CONFIG).exists() else command


def rbd_pool_flags(pools: list[dict[str, Any]]) -> list[str]:
    """``--rbd-pool`` flags for the configured Ceph pools (the keyring by path, never the key)."""
    flags = []
    for pool in pools:
        items = [f"{key}={pool[key]}" for key in ("name", "pool", "user", "keyring")]
        items += [f"mon={monitor}" for monitor in pool.get("monitors", [])]
        if "timeout" in pool:
            items.append(f"timeout={pool['timeout']}")
        if any("," in item for item in items):
            raise ValueError(f"rbd pool {pool.get('name')!r}: a value with a comma")
        flags += ["--rbd-pool", ",".join(items)]
    return flags


async def ensure_local_host(s: AsyncSession, config: Config) -> None:
    """With no host registered, this machine is the one host (a working one-machine cloud)."""
    if await s.scalar(select(func.count()).select_from(Host)) == 0:
        command = local_agent_command(config, await installation_prefix(s, config))
        s.add(Host(name="local", address="local", agent_command=command, state="down", facts={}))


async def add_host(s: AsyncSession, name: str, address: str, *, agent_command: str | None, key_file: str | None,
                   known_hosts: str | None, config: Config) -> Host:
    if await s.get(Host, name) is not None:
        raise ValueError(f"host {name} exists already")
    if address == "local":
        argv = shlex.split(agent_command) if agent_command else local_agent_command(
            config, await installation_prefix(s, config), name)
    else:
        argv = shlex.split(agent_command or f"strato-agent --stdio --config {HOST_CONFIG}")
    host = Host(name=name, address=address, agent_command=argv, key_file=key_file, known_hosts=known_hosts,
                state="down", facts={})
    s.add(host)
    return host


async def list_hosts(s: AsyncSession) -> list[dict[str, Any]]:
    running = dict((await s.execute(select(Server.host, func.count()).where(Server.host.is_not(None))
                                    .group_by(Server.host))).all())
    return [{"name": h.name, "address": h.address, "state": h.state, "servers": running.get(h.name, 0),
             "cores": h.facts.get("cores"), "memory": h.facts.get("memory"), "virt_type": h.facts.get("virt_type"),
             "pools": [p["name"] for p in h.facts.get("pools", [])],
             "unreachable_pools": h.facts.get("unreachable_pools", [])}
            for h in (await s.scalars(select(Host).order_by(Host.name))).all()]


async def drain_host(s: AsyncSession, name: str) -> None:
    host = await s.get(Host, name)
    if host is None:
        raise ValueError(f"no host {name}")
    host.state = "draining"  # keeps running servers; the scheduler places nothing new there


async def resume_host(s: AsyncSession, name: str) -> None:
    host = await s.get(Host, name)
    if host is None:
        raise ValueError(f"no host {name}")
    if host.state == "draining":
        host.state = "up"  # the connection marks it down again if it is not connected


async def remove_host(s: AsyncSession, name: str) -> None:
    host = await s.get(Host, name)
    if host is None:
        raise ValueError(f"no host {name}")
    if await s.scalar(select(func.count()).select_from(Server).where(Server.host == name)):
        raise ValueError(f"host {name} still runs servers; stop them or drain it first")
    if await s.scalar(select(func.count()).select_from(Drive).where(Drive.host == name)):
        raise ValueError(f"host {name} still holds drives; delete or move them first")
    await s.delete(host)


async def local_pool_dirs(s: AsyncSession, config: Config) -> list[Path]:
    """The pool directories of the hosts on this machine (the embedded local host included)."""
    if config.local_host:
        await ensure_local_host(s, config)
    hosts = (await s.scalars(select(Host).where(Host.address == "local").order_by(Host.name))).all()
    return [path for host in hosts for flag, path in agent_dirs(host) if flag == "--pool"]


def agent_dirs(host: Host) -> list[tuple[str, Path]]:
    """The directories a host's agent command names, with their flag: the pools (``--pool
    NAME=PATH``), the console sockets (``--socket-dir``), the console logs (``--console-log-dir``)."""
    dirs = []
    for flag, value in itertools.pairwise(host.agent_command):
        if flag == "--pool" and "=" in value:
            dirs.append((flag, Path(value.split("=", 1)[1])))
        elif flag in ("--socket-dir", "--console-log-dir"):
            dirs.append((flag, Path(value)))
    return dirs


def qemu_cannot_reach(path: Path) -> str | None:
    """Why QEMU's user could not reach files under ``path`` (the first directory on the way it may
    not traverse, by the mode bits that apply to it: owner, group or other), or None.  Directories
    not made yet are the agent's to make (mode from its umask)."""
    for name in QEMU_USERS:
        try:
            user = pwd.getpwnam(name)
            break
        except KeyError:
            continue
    else:
        return None  # no QEMU user here: nothing to tell
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
    absolute = path.absolute()
    for directory in [absolute, *absolute.parents]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue
        bit = 0o100 if st.st_uid == user.pw_uid else 0o010 if st.st_gid in groups else 0o001
        if not st.st_mode & bit:
            return (f"{directory} (mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}) does not let QEMU's user "
                    f"{name} through, so QEMU could not reach {path}")
    return None
