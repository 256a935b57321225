"""libvirt domain XML as small typed elements (see `agents/xml/model.py` for the machinery).

These classes only convert between objects and XML; they make no decisions. Which bus, which
topology, which quota: that is policy and lives in `agents/translate.py`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Literal

from agents.xml.model import Attr, Child, Children, Element, Flag

STRATO_NS = "urn:strato:agent:1"
ET.register_namespace("strato", STRATO_NS)


# -- shared device sub-elements ---------------------------------------------------------------


class PciAddress(Element, tag="address", match={"type": "pci"}):
    domain: int = Attr("@domain", default=0)
    bus: int = Attr("@bus")
    slot: int = Attr("@slot")
    function: int = Attr("@function", default=0)


class DriveAddress(Element, tag="address", match={"type": "drive"}):
    controller: int = Attr("@controller")
    bus: int = Attr("@bus")
    target: int = Attr("@target", default=0)
    unit: int = Attr("@unit")


Address = PciAddress | DriveAddress


class Device(Element):
    """What every device may carry (virt-manager's DeviceBoot, DeviceAlias, DeviceAddress),
    declared once and written after each device's own facts."""

    boot_order: int | None = Attr("boot/@order", default=None)
    alias: str | None = Attr("alias/@name", default=None)
    address: Address | None = Child(default=None)


# -- top-level sections -----------------------------------------------------------------------


class Metadata(Element, tag=f"{{{STRATO_NS}}}server"):
    """Strato's own facts kept inside libvirt, so a restarted agent can find them again."""

    server_uuid: str | None = Attr(f"{{{STRATO_NS}}}server-uuid", default=None)
    active_since: str | None = Attr(f"{{{STRATO_NS}}}active-since", default=None)


class SysInfoEntry(Element, tag="entry"):
    name: str = Attr("@name")
    value: str = Attr(".")


class SysInfo(Element, tag="sysinfo", match={"type": "smbios"}):
    bios: list[SysInfoEntry] = Children("bios")
    system: list[SysInfoEntry] = Children("system")


class Os(Element, tag="os"):
    type: str = Attr("type", default="hvm")
    arch: str = Attr("type/@arch", default="x86_64")
    machine: str | None = Attr("type/@machine", default=None)
    smbios_mode: Literal["sysinfo", "host", "emulate"] | None = Attr("smbios/@mode", default=None)
    boot_menu: bool | None = Attr("bootmenu/@enable", default=None)


class HyperV(Element, tag="hyperv"):
    mode: Literal["custom", "passthrough"] | None = Attr("@mode", default="custom")
    relaxed: bool | None = Attr("relaxed/@state", default=None, true="on", false="off")
    vapic: bool | None = Attr("vapic/@state", default=None, true="on", false="off")


class Features(Element, tag="features"):
    acpi: bool = Flag("acpi")
    apic: bool = Flag("apic")
    pae: bool = Flag("pae")
    hyperv: HyperV | None = Child(default=None)


class CpuTune(Element, tag="cputune"):
    period: int | None = Attr("period", default=None)
    quota: int | None = Attr("quota", default=None)


class Topology(Element, tag="topology"):
    sockets: int = Attr("@sockets")
    dies: int = Attr("@dies", default=1)
    cores: int = Attr("@cores")
    threads: int = Attr("@threads", default=1)


class NumaCell(Element, tag="cell"):
    id: int = Attr("@id")
    cpus: str = Attr("@cpus")
    memory: int = Attr("@memory")
    unit: str = Attr("@unit", default="KiB")


class Cpu(Element, tag="cpu"):
    mode: Literal["host-passthrough", "host-model", "custom", "maximum"] = Attr("@mode")
    match: Literal["exact", "minimum", "strict"] | None = Attr("@match", default=None)
    check: Literal["none", "partial", "full"] | None = Attr("@check", default=None)
    model: str | None = Attr("model", default=None)
    model_fallback: Literal["allow", "forbid"] | None = Attr("model/@fallback", default=None)
    topology: Topology | None = Child(default=None)
    cells: list[NumaCell] = Children("numa")


class Timer(Element, tag="timer"):
    name: str = Attr("@name")
    present: bool | None = Attr("@present", default=None)
    tickpolicy: str | None = Attr("@tickpolicy", default=None)


class Clock(Element, tag="clock"):
    offset: Literal["utc", "localtime"] = Attr("@offset", default="utc")
    timers: list[Timer] = Children()


# -- devices ----------------------------------------------------------------------------------


class DiskHost(Element, tag="host"):
    """A network disk's server (for RBD: a Ceph monitor)."""

    name: str = Attr("@name")
    port: int | None = Attr("@port", default=None)


class Disk(Device, tag="disk"):
    type: Literal["file", "block", "volume", "network"] = Attr("@type", default="file")
    device: Literal["disk", "cdrom"] = Attr("@device", default="disk")
    driver_name: str = Attr("driver/@name", default="qemu")
    driver_type: Literal["raw", "qcow2"] = Attr("driver/@type", default="qcow2")
    cache: str | None = Attr("driver/@cache", default=None)
    source: str | None = Attr("source/@file", default=None)  # type file
    protocol: Literal["rbd"] | None = Attr("source/@protocol", default=None)  # type network
    source_name: str | None = Attr("source/@name", default=None)  # rbd: "pool/image"
    hosts: list[DiskHost] = Children("source")
    auth_username: str | None = Attr("source/auth/@username", default=None)
    secret_type: Literal["ceph"] | None = Attr("source/auth/secret/@type", default=None)
    secret_uuid: str | None = Attr("source/auth/secret/@uuid", default=None)
    # The image a qcow2 overlay reads through to, as libvirt reports it in the live XML (libvirt
    # reads the chain from the overlay's header, so Strato never writes it).
    backing: str | None = Attr("backingStore/source/@file", default=None)
    target: str = Attr("target/@dev")
    bus: Literal["ide", "virtio", "scsi", "sata"] = Attr("target/@bus")
    readonly: bool = Flag("readonly")
    serial: str | None = Attr("serial", default=None)


class Controller(Device, tag="controller"):
    type: Literal["pci", "scsi", "ide", "usb", "virtio-serial"] = Attr("@type")
    index: int = Attr("@index")
    model: str | None = Attr("@model", default=None)


class Interface(Device, tag="interface"):
    type: Literal["user", "network", "bridge"] = Attr("@type")
    mac: str = Attr("mac/@address")
    network: str | None = Attr("source/@network", default=None)
    bridge: str | None = Attr("source/@bridge", default=None)
    target_dev: str | None = Attr("target/@dev", default=None)
    model: Literal["virtio", "e1000", "rtl8139"] = Attr("model/@type")


class Listen(Element, tag="listen"):
    type: Literal["address", "network", "none"] = Attr("@type", default="address")
    address: str | None = Attr("@address", default=None)


class Graphics(Device, tag="graphics", match={"type": "vnc"}):
    port: int | None = Attr("@port", default=None)
    autoport: bool | None = Attr("@autoport", default=None)
    listen: str | None = Attr("@listen", default=None)
    passwd: str | None = Attr("@passwd", default=None)
    listens: list[Listen] = Children()


class Serial(Device, tag="serial", match={"type": "unix"}):
    mode: Literal["bind", "connect"] = Attr("source/@mode", default="bind")
    path: str = Attr("source/@path")
    log_file: str | None = Attr("log/@file", default=None)
    log_append: bool | None = Attr("log/@append", default=None, true="on", false="off")
    port: int = Attr("target/@port")


class MemBalloon(Device, tag="memballoon"):
    model: Literal["none", "virtio"] = Attr("@model", default="none")


DomainDevice = Controller | Disk | Interface | Serial | Graphics | MemBalloon  # what <devices> holds


class Domain(Element, tag="domain"):
    type: Literal["kvm", "qemu"] = Attr("@type")
    name: str = Attr("name")
    uuid: str = Attr("uuid")
    title: str | None = Attr("title", default=None)
    description: str | None = Attr("description", default=None)
    metadata: Metadata | None = Child("metadata", default=None)
    memory_kib: int = Attr("memory")
    memory_unit: str = Attr("memory/@unit", default="KiB")
    vcpus: int = Attr("vcpu")
    cputune: CpuTune | None = Child(default=None)
    sysinfo: SysInfo | None = Child(default=None)
    os: Os = Child()
    features: Features | None = Child(default=None)
    cpu: Cpu | None = Child(default=None)
    clock: Clock | None = Child(default=None)
    on_poweroff: str | None = Attr("on_poweroff", default="destroy")
    on_reboot: str | None = Attr("on_reboot", default="restart")
    on_crash: str | None = Attr("on_crash", default="destroy")
    devices: list[DomainDevice] = Children("devices")

    def disks(self) -> list[Disk]:
        return [d for d in self.devices if isinstance(d, Disk)]

    def interfaces(self) -> list[Interface]:
        return [d for d in self.devices if isinstance(d, Interface)]

    def graphics(self) -> Graphics | None:
        return next((d for d in self.devices if isinstance(d, Graphics)), None)
