"""Policy: the CloudSigma server spec plus host facts become a libvirt `Domain`.

This is the only module where CloudSigma terms meet libvirt terms (Nova's designer.py split);
`agents/domain_xml.py` only mirrors XML. Everything here is pure: no libvirt connection, so a
bad spec is refused (`AgentError("invalid")`) before anything is defined.

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
import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Literal

from agents.domain_xml import (
    Clock,
    Controller,
    Cpu,
    CpuTune,
    Device,
    Disk,
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
from agents.errors import AgentError

CPU_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
VNC_LISTEN = "127.0.0.1"
DRIVE_ALIAS_PREFIX = "ua-drive-"
CHANNEL_LIMITS = {"ide": (1, 1), "virtio": (170, 5), "scsi": (170, 5)}
CONTROLLERS_PER_BRIDGE = 5
UNITS_PER_CONTROLLER = 6
BRIDGE_SLOT = 0x1F
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Characters XML 1.0 cannot carry at all; ElementTree would write them and libvirt would refuse.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


@dataclass(frozen=True)
class DriveSpec:
    uuid: str
    pool: str | None
    volume: str
    media: Literal["disk", "cdrom"]
    device: Literal["virtio", "ide", "scsi"]
    controller: int
    unit: int
    boot_order: int | None


@dataclass(frozen=True)
class NicSpec:
    mac: str
    model: Literal["virtio", "e1000", "rtl8139"]
    network: str | None
    boot_order: int | None


@dataclass(frozen=True)
class ServerSpec:
    uuid: str
    name: str
    cpu: int
    mem: int
    smp: int
    cpus_instead_of_cores: bool
    enable_numa: bool
    hv_relaxed: bool
    hv_tsc: bool
    cpu_model: str | None
    vnc_password: str
    context: bool
    drives: tuple[DriveSpec, ...]
    nics: tuple[NicSpec, ...]


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
class VolumeRef:
    path: str
    format: Literal["raw", "qcow2"]


# -- validation -------------------------------------------------------------------------------


def parse_server(raw: Any) -> ServerSpec:
    """Check the wire `server` object; every problem is an `invalid` error naming the key."""
    if not isinstance(raw, dict):
        raise AgentError("invalid", "server: expected an object")
    get = _Getter(raw, "server")
    drives = tuple(_parse_drive(d, f"server.drives.{i}") for i, d in enumerate(get.list("drives")))
    nics = tuple(_parse_nic(n, f"server.nics.{i}") for i, n in enumerate(get.list("nics")))
    seen: dict[tuple[str, int, int], str] = {}
    for drive in drives:
        key = ("scsi" if drive.device == "scsi" else drive.device, drive.controller, drive.unit)
        if key in seen:
            raise AgentError("invalid", f"server.drives: {drive.device} {drive.controller}:{drive.unit} "
                                        f"used by both {seen[key]} and {drive.uuid}")
        seen[key] = drive.uuid
    macs = [n.mac for n in nics]
    if len(set(macs)) != len(macs):
        raise AgentError("invalid", "server.nics: duplicate mac")
    cpu_model = get.opt_str("cpu_model")
    if cpu_model not in (None, "kvm64"):
        raise AgentError("invalid", f"server.cpu_model: unsupported model {cpu_model!r}")
    vnc_password = get.str("vnc_password")
    if not vnc_password or _NOT_XML.search(vnc_password):
        raise AgentError("invalid", "server.vnc_password: must be non-empty printable text")
    return ServerSpec(
        uuid=_uuid(get.str("uuid"), "server.uuid"),
        name=get.str("name"),
        cpu=get.int("cpu", low=1),
        mem=get.int("mem", low=1 << 20),
        smp=get.int("smp", low=1, high=255),
        cpus_instead_of_cores=get.bool("cpus_instead_of_cores"),
        enable_numa=get.bool("enable_numa"),
        hv_relaxed=get.bool("hv_relaxed"),
        hv_tsc=get.bool("hv_tsc"),
        cpu_model=cpu_model,
        vnc_password=vnc_password,
        context=get.bool("context"),
        drives=drives,
        nics=nics,
    )


def _parse_drive(raw: Any, where: str) -> DriveSpec:
    if not isinstance(raw, dict):
        raise AgentError("invalid", f"{where}: expected an object")
    get = _Getter(raw, where)
    device = get.choice("device", ("virtio", "ide", "scsi"))
    channel = get.str("dev_channel")
    match = re.fullmatch(r"(\d{1,4}):(\d{1,4})", channel)
    max_c, max_u = CHANNEL_LIMITS[device]
    if match is None:
        raise AgentError("invalid", f"{where}.dev_channel: expected 'C:U', got {channel!r}")
    controller, unit = int(match[1]), int(match[2])
    if controller > max_c or unit > max_u:
        raise AgentError("invalid", f"{where}.dev_channel: {channel} is out of range for {device} "
                                    f"(controller 0..{max_c}, unit 0..{max_u})")
    return DriveSpec(
        uuid=_uuid(get.str("uuid"), f"{where}.uuid"),
        pool=get.opt_str("pool"),
        volume=get.str("volume"),
        media=get.choice("media", ("disk", "cdrom")),
        device=device,
        controller=controller,
        unit=unit,
        boot_order=get.opt_int("boot_order", low=1),
    )


def _parse_nic(raw: Any, where: str) -> NicSpec:
    if not isinstance(raw, dict):
        raise AgentError("invalid", f"{where}: expected an object")
    get = _Getter(raw, where)
    mac = get.str("mac").lower()
    if not _MAC.match(mac):
        raise AgentError("invalid", f"{where}.mac: not a MAC address: {mac!r}")
    return NicSpec(
        mac=mac,
        model=get.choice("model", ("virtio", "e1000", "rtl8139")),
        network=get.opt_str("network"),
        boot_order=get.opt_int("boot_order", low=1),
    )


class _Getter:
    """Typed reads from one JSON object, with errors naming the key's path."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where

    def _get(self, key: str) -> Any:
        if key not in self.raw:
            raise AgentError("invalid", f"{self.where}.{key}: missing")
        return self.raw[key]

    def str(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise AgentError("invalid", f"{self.where}.{key}: expected a string")
        return value

    def opt_str(self, key: str) -> str | None:
        return None if self.raw.get(key) is None else self.str(key)

    def int(self, key: str, low: int | None = None, high: int | None = None) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise AgentError("invalid", f"{self.where}.{key}: expected an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            raise AgentError("invalid", f"{self.where}.{key}: {value} out of range")
        return value

    def opt_int(self, key: str, low: int | None = None) -> int | None:
        return None if self.raw.get(key) is None else self.int(key, low=low)

    def bool(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise AgentError("invalid", f"{self.where}.{key}: expected true or false")
        return value

    def list(self, key: str) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list):
            raise AgentError("invalid", f"{self.where}.{key}: expected a list")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> Any:
        value = self.str(key)
        if value not in choices:
            raise AgentError("invalid", f"{self.where}.{key}: {value!r} is not one of {', '.join(choices)}")
        return value


def _uuid(value: str, where: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise AgentError("invalid", f"{where}: not a UUID: {value!r}") from None


# -- translation ------------------------------------------------------------------------------


def domain_name(prefix: str, server_uuid: str) -> str:
    return prefix + server_uuid


def drive_alias(drive_uuid: str) -> str:
    return DRIVE_ALIAS_PREFIX + drive_uuid


def console_log_path(host: HostPolicy, name: str) -> str:
    return f"{host.console_log_dir}/{name}.log"


def build_domain(spec: ServerSpec, host: HostPolicy, volumes: dict[str, VolumeRef],
                 active_since: str | None = None) -> Domain:
    """The whole domain for `spec`; `volumes` maps each drive uuid to its resolved volume."""
    name = domain_name(host.prefix, spec.uuid)
    label = _NOT_XML.sub("", spec.name).replace("\r", " ").replace("\n", " ") or None
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


def _cpu(spec: ServerSpec, host: HostPolicy, mem_mib: int) -> Cpu:
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


def _ordered(spec: ServerSpec, device: str) -> list[DriveSpec]:
    return sorted((d for d in spec.drives if d.device == device), key=lambda d: (d.controller, d.unit))


def _bridges(spec: ServerSpec) -> list[Controller]:
    virtio = _ordered(spec, "virtio")
    if not virtio:
        return []
    count = virtio[-1].controller // CONTROLLERS_PER_BRIDGE + 1
    return [
        Controller(type="pci", index=k, model="pci-bridge",
                   address=PciAddress(bus=k - 1, slot=BRIDGE_SLOT))
        for k in range(1, count + 1)
    ]


def _scsi_controllers(spec: ServerSpec) -> list[Controller]:
    # Every index up to the highest used: libvirt would fill a gap with an lsilogic controller.
    used = [d.controller for d in spec.drives if d.device == "scsi"]
    return [Controller(type="scsi", index=c, model="virtio-scsi") for c in range(max(used) + 1)] if used else []


def _disks(spec: ServerSpec, volumes: dict[str, VolumeRef]) -> list[Disk]:
    disks: list[Disk] = []
    for device, stem in (("virtio", "vd"), ("ide", "hd"), ("scsi", "sd")):
        for n, drive in enumerate(_ordered(spec, device)):
            volume = volumes[drive.uuid]
            cdrom = drive.media == "cdrom"
            address: PciAddress | DriveAddress
            if device == "virtio":
                address = PciAddress(
                    bus=drive.controller // CONTROLLERS_PER_BRIDGE + 1,
                    slot=1 + (drive.controller % CONTROLLERS_PER_BRIDGE) * UNITS_PER_CONTROLLER + drive.unit,
                )
            elif device == "ide":
                address = DriveAddress(controller=0, bus=drive.controller, unit=drive.unit)
            else:
                address = DriveAddress(controller=drive.controller, bus=0, target=0, unit=drive.unit)
            disks.append(Disk(
                device="cdrom" if cdrom and device != "virtio" else "disk",
                driver_type=volume.format,
                source=volume.path,
                target=stem + _disk_letters(n),
                bus=device,
                readonly=cdrom,
                serial=drive.uuid.replace("-", "")[-20:],
                boot_order=drive.boot_order,
                alias=drive_alias(drive.uuid),
                address=address,
            ))
    return disks


def _disk_letters(n: int) -> str:
    """0 → a, 25 → z, 26 → aa: the kernel's sd/vd naming."""
    letters = ""
    n += 1
    while n:
        n, rest = divmod(n - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def _interfaces(spec: ServerSpec) -> list[Interface]:
    # network null → user-mode (slirp) networking: needs no host bridge and works under
    # qemu:///system; named networks are libvirt networks managed outside the agent.
    return [
        Interface(type="network" if nic.network else "user", mac=nic.mac, network=nic.network,
                  model=nic.model, boot_order=nic.boot_order)
        for nic in spec.nics
    ]


def _serials(spec: ServerSpec, host: HostPolicy, name: str) -> list[Serial]:
    serials = [Serial(path=f"{host.socket_dir}/{spec.uuid}.console", port=0,
                      log_file=console_log_path(host, name), log_append=False)]
    if spec.context:
        serials.append(Serial(path=f"{host.socket_dir}/{spec.uuid}.context", port=1))
    return serials
