"""The libvirt connection and what the host offers (capabilities, CPU, memory, NUMA)."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal

import libvirt

from agents.rbd import RbdPoolConfig
from agents.storage import PoolConfig


@dataclass(frozen=True)
class AgentConfig:
    uri: str = "qemu:///system"
    virt_type: Literal["kvm", "qemu"] | None = None  # None: kvm when the host offers it
    pools: tuple[PoolConfig, ...] = field(default=(PoolConfig("default", "/var/lib/strato/pool"),))
    rbd_pools: tuple[RbdPoolConfig, ...] = ()
    cores_per_numa_node: int | None = None
    prefix: str = "strato-"
    console_log_dir: str = "/var/log/strato/console"
    socket_dir: str = "/run/strato"
    vxlan_local: str | None = None  # this host's VXLAN endpoint address (None: VLANs stay on this host)
    vxlan_port: int = 4789
    migrate_uri: str | None = None      # this libvirtd from other hosts' (None: no live migration here)
    migrate_address: str | None = None  # QEMU's migration stream to this host


@dataclass(frozen=True)
class NumaCellFacts:
    id: int
    cpus: tuple[int, ...]
    memory: int  # bytes


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    cores: int
    mhz: int
    memory: int
    numa_cells: tuple[NumaCellFacts, ...]
    virt_types: tuple[str, ...]

    @classmethod
    def read(cls, conn: libvirt.virConnect) -> HostFacts:
        _model, memory_mib, cpus, mhz, *_rest = conn.getInfo()
        caps = ET.fromstring(conn.getCapabilities())
        cells = tuple(
            NumaCellFacts(
                id=int(cell.get("id", "0")),
                cpus=tuple(int(c.get("id", "0")) for c in cell.iterfind("cpus/cpu")),
                memory=int(cell.findtext("memory", "0")) * 1024,
            )
            for cell in caps.iterfind("host/topology/cells/cell")
        )
        types: list[str] = []
        for guest in caps.iterfind("guest"):
            arch = guest.find("arch")
            if guest.findtext("os_type") == "hvm" and arch is not None and arch.get("name") == "x86_64":
                types += [d.get("type", "") for d in arch.iterfind("domain") if d.get("type") not in types]
        return cls(hostname=socket.gethostname(), cores=cpus, mhz=mhz, memory=memory_mib * 1024 * 1024,
                   numa_cells=cells, virt_types=tuple(types))

    def cores_per_numa_node(self, override: int | None) -> int:
        if override:
            return override
        return max((len(c.cpus) for c in self.numa_cells), default=self.cores) or 1

    def pick_virt_type(self, wanted: str | None) -> Literal["kvm", "qemu"]:
        if wanted is None:
            return "kvm" if "kvm" in self.virt_types else "qemu"
        if wanted not in self.virt_types:
            raise ValueError(f"virt type {wanted!r} not offered by this host ({', '.join(self.virt_types)})")
        return "kvm" if wanted == "kvm" else "qemu"
