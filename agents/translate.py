"""Policy: the CloudSigma server spec plus host facts become a libvirt `Domain`.

This is the only module where CloudSigma terms meet libvirt terms (Nova's designer.py split);
`agents/xml/domain.py` only mirrors XML. Everything here is pure: no libvirt connection, so a
bad spec is refused before anything is defined. The spec arrives as a `wire.Server`, already
validated (shapes, ranges, dev_channel limits, duplicates) by `agents/wire.py`.

Device placement, chosen so guest device names follow `dev_channel` order:

* machine `pc` (i440fx), because only it has the two IDE channels of CloudSigma's `ide`.
* `ide` C:U (C, U ∈ 0..1) → `<address type='drive' controller='0' bus='C' unit='U'/>`, dev hdX.
* `virtio` C:U (C ∈ 0..170, U ∈ 0..5) → virtio-blk on PCI bus `C // 5 + 1`, slot
  `1 + (C % 5) * 6 + U` (slots 1..30). Bus k is a pci-bridge (controller index k) sitting in
  slot 0x1f of bus k-1 (bus 1 in slot 0x1f of the root bus); bridges 1..max are created as
  needed. Guests enumerate PCI depth first in slot order, so virtio disks appear in (C, U)
  order: 0:0…0:5 are slots 1..6 of bus 1, 1:0 is slot 7. Nothing else is placed on the
  bridges, so the other devices (NICs, SCSI controllers, video) keep libvirt's automatic
  root-bus slots, assigned in document order (NICs in list order).
* `scsi` C:U → virtio-scsi controller index C, `<address type='drive' controller='C' bus='0'
  target='0' unit='U'/>` (U is the LUN); controllers 0..max C all exist, in index order.
* target dev names (vdX / hdX / sdX) are handed out per family in (C, U) order.
* a `cdrom` on ide/scsi is `device='cdrom'` + `<readonly/>`; on virtio a read-only virtio disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from agents.wire import CHANNEL_LIMITS, NOT_XML, Server, ServerDrive
from agents.xml.domain import (
    Clock,
    Controller,
    Cpu,
    CpuTune,
    Device,
    Disk,
    DiskHost,
    Domain,
    DriveAddress,
    Features,
    Graphics,
    HyperV,
    Interface,
    Listen,
    MemBalloon,
    Metadata,
    NumaCell,
    Os,
    PciAddress,
    Serial,
    SysInfo,
    SysInfoEntry,
    Timer,
    Topology,
)

CPU_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
VNC_LISTEN = "127.0.0.1"
DRIVE_ALIAS_PREFIX = "ua-drive-"
CONTROLLERS_PER_BRIDGE = 5
UNITS_PER_CONTROLLER = CHANNEL_LIMITS["virtio"].units  # slots 1..30 of a bridge
BRIDGE_SLOT = 0x1F


@dataclass(frozen=True)
class HostPolicy:
    """The host facts and agent settings translation depends on."""

    virt_type: Literal["kvm", "qemu"]
    mhz_per_core: int
    cores_per_numa_node: int
    prefix: str
    console_log_dir: str
    socket_dir: str


@dataclass(frozen=True)
class RbdRef:
    """Where QEMU finds an RBD image itself: monitors, cephx user and the libvirt secret of its key."""

    name: str  # "pool/image"
    monitors: tuple[tuple[str, int | None], ...]
    user: str
    secret_uuid: str


@dataclass(frozen=True)
class VolumeRef:
    path: str
    format: Literal["raw", "qcow2"]
    rbd: RbdRef | None = None  # a network disk; otherwise `path` is a file


# -- translation ------------------------------------------------------------------------------


def domain_name(prefix: str, server_uuid: str) -> str:
    return prefix + server_uuid


def drive_alias(drive_uuid: str) -> str:
    return DRIVE_ALIAS_PREFIX + drive_uuid


def console_log_path(host: HostPolicy, name: str) -> str:
    return f"{host.console_log_dir}/{name}.log"


def context_socket_path(host: HostPolicy, uuid: str) -> str:
    """QEMU's end of the guest's context port (ttyS1); the agent connects to it."""
    return f"{host.socket_dir}/{uuid}.context"


def build_domain(spec: Server, host: HostPolicy, volumes: dict[str, VolumeRef],
                 active_since: str | None = None) -> Domain:
    """The whole domain for `spec`; `volumes` maps each drive uuid to its resolved volume."""
    name = domain_name(host.prefix, spec.uuid)
    label = NOT_XML.sub("", spec.name).replace("\r", " ").replace("\n", " ") or None
    mem_mib = math.ceil(spec.mem / (1 << 20))
    devices: list[Device] = [
        *_bridges(spec),
        *_scsi_controllers(spec),
        *_disks(spec, volumes),
        *_interfaces(spec),
        *_serials(spec, host, name),
        Graphics(autoport=True, listen=VNC_LISTEN, passwd=spec.vnc_password[:8],
                 listens=[Listen(type="address", address=VNC_LISTEN)]),
        MemBalloon(model="none"),
    ]
    return Domain(
        type=host.virt_type,
        name=name,
        uuid=spec.uuid,
        title=label,
        description=label,
        metadata=Metadata(server_uuid=spec.uuid, active_since=active_since),
        memory_kib=mem_mib * 1024,
        vcpus=spec.smp,
        cputune=CpuTune(period=CPU_PERIOD_US, quota=cpu_quota(spec.cpu, host.mhz_per_core)),
        sysinfo=SysInfo(system=[
            SysInfoEntry(name="manufacturer", value="CloudSigma"),
            SysInfoEntry(name="product", value="CloudSigma"),
            SysInfoEntry(name="serial", value=spec.uuid),
            SysInfoEntry(name="uuid", value=spec.uuid),
        ]),
        os=Os(machine="pc", smbios_mode="sysinfo"),
        features=Features(acpi=True, apic=True, hyperv=HyperV(relaxed=True) if spec.hv_relaxed else None),
        cpu=_cpu(spec, host, mem_mib),
        clock=Clock(timers=[Timer(name="hypervclock", present=True)] if spec.hv_tsc else []),
        devices=devices,
    )


def cpu_quota(cpu_mhz: int, mhz_per_core: int) -> int:
    """CFS quota for a whole-server MHz budget: the share of one core's period it buys."""
    return max(MIN_QUOTA_US, round(cpu_mhz / max(1, mhz_per_core) * CPU_PERIOD_US))


def numa_cells(smp: int, mem_mib: int, cores_per_node: int) -> list[NumaCell]:
    """Cells of at most `cores_per_node` vCPUs; memory split evenly in whole MiB (the first
    cells take the remainder, one MiB each)."""
    per_node = max(1, cores_per_node)
    count = math.ceil(smp / per_node)
    share, extra = divmod(mem_mib, count)
    cells = []
    for i in range(count):
        first, last = i * per_node, min(smp, (i + 1) * per_node) - 1
        cpus = str(first) if first == last else f"{first}-{last}"
        cells.append(NumaCell(id=i, cpus=cpus, memory=(share + (1 if i < extra else 0)) * 1024))
    return cells


def _cpu(spec: Server, host: HostPolicy, mem_mib: int) -> Cpu:
    if spec.cpus_instead_of_cores:
        topology = Topology(sockets=spec.smp, cores=1, threads=1)
    else:
        topology = Topology(sockets=1, cores=spec.smp, threads=1)
    cells = numa_cells(spec.smp, mem_mib, host.cores_per_numa_node) if spec.enable_numa else []
    if spec.cpu_model is not None:
        return Cpu(mode="custom", match="exact", check="none", model=spec.cpu_model,
                   model_fallback="forbid", topology=topology, cells=cells)
    # host-passthrough needs KVM; under TCG "maximum" (-cpu max) is the closest equivalent.
    mode: Literal["host-passthrough", "maximum"] = "host-passthrough" if host.virt_type == "kvm" else "maximum"
    return Cpu(mode=mode, check="none", topology=topology, cells=cells)


def _ordered(spec: Server, device: str) -> list[ServerDrive]:
    return sorted((d for d in spec.drives if d.device == device), key=lambda d: d.channel)


def _bridges(spec: Server) -> list[Controller]:
    virtio = _ordered(spec, "virtio")
    if not virtio:
        return []
    count = virtio[-1].channel[0] // CONTROLLERS_PER_BRIDGE + 1
    return [
        Controller(type="pci", index=k, model="pci-bridge",
                   address=PciAddress(bus=k - 1, slot=BRIDGE_SLOT))
        for k in range(1, count + 1)
    ]


def _scsi_controllers(spec: Server) -> list[Controller]:
    # Every index up to the highest used: libvirt would fill a gap with an lsilogic controller.
    used = [d.channel[0] for d in spec.drives if d.device == "scsi"]
    return [Controller(type="scsi", index=c, model="virtio-scsi") for c in range(max(used) + 1)] if used else []


def _disks(spec: Server, volumes: dict[str, VolumeRef]) -> list[Disk]:
    disks: list[Disk] = []
    for device, stem in (("virtio", "vd"), ("ide", "hd"), ("scsi", "sd")):
        for n, drive in enumerate(_ordered(spec, device)):
            volume = volumes[drive.uuid]
            cdrom = drive.media == "cdrom"
            controller, unit = drive.channel
            address: PciAddress | DriveAddress
            if device == "virtio":
                address = PciAddress(
                    bus=controller // CONTROLLERS_PER_BRIDGE + 1,
                    slot=1 + (controller % CONTROLLERS_PER_BRIDGE) * UNITS_PER_CONTROLLER + unit,
                )
            elif device == "ide":
                address = DriveAddress(controller=0, bus=controller, unit=unit)
            else:
                address = DriveAddress(controller=controller, bus=0, target=0, unit=unit)
            disks.append(Disk(
                device="cdrom" if cdrom and device != "virtio" else "disk",
                driver_type=volume.format,
                **_source(volume),
                target=stem + _disk_letters(n),
                bus=device,
                readonly=cdrom,
                serial=drive.uuid.replace("-", "")[-20:],
                boot_order=drive.boot_order,
                alias=drive_alias(drive.uuid),
                address=address,
            ))
    return disks


def _source(volume: VolumeRef) -> dict[str, Any]:
    """The disk's source: a file, or an RBD image QEMU opens through librbd with the pool's key."""
    if volume.rbd is None:
        return {"source": volume.path}
    rbd = volume.rbd
    return {"type": "network", "protocol": "rbd", "source_name": rbd.name,
            "hosts": [DiskHost(name=host, port=port) for host, port in rbd.monitors],
            "auth_username": rbd.user, "secret_type": "ceph", "secret_uuid": rbd.secret_uuid}


def _disk_letters(n: int) -> str:
    """0 → a, 25 → z, 26 → aa: the kernel's sd/vd naming."""
    letters = ""
    n += 1
    while n:
        n, rest = divmod(n - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def _interfaces(spec: Server) -> list[Interface]:
    # network null → user-mode (slirp) networking: needs no host bridge and works under
    # qemu:///system; named networks are libvirt networks managed outside the agent.
    return [
        Interface(type="network" if nic.network else "user", mac=nic.mac, network=nic.network,
                  model=nic.model, boot_order=nic.boot_order)
        for nic in spec.nics
    ]


def _serials(spec: Server, host: HostPolicy, name: str) -> list[Serial]:
    serials = [Serial(path=f"{host.socket_dir}/{spec.uuid}.console", port=0,
                      log_file=console_log_path(host, name), log_append=False)]
    if spec.context:
        serials.append(Serial(path=context_socket_path(host, spec.uuid), port=1))
    return serials
