"""Unit tests of the XML elements and the translation policy (no libvirt).

The golden file pins the whole rendered domain for one server that uses every translation
branch; regenerate it with STRATO_REGEN_GOLDEN=1 after an intended change and review the diff.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec
import pytest

from agents import wire
from agents.translate import HostPolicy, RbdRef, VolumeRef, _disk_letters, build_domain, cpu_quota, numa_cells
from agents.xml import domain as domain_xml
from agents.xml.domain import Domain, PciAddress
from agents.xml.model import Element

GOLDEN = Path(__file__).parent / "golden" / "server-full.xml"
HOST = HostPolicy(virt_type="qemu", mhz_per_core=2000, cores_per_numa_node=2, prefix="strato-",
                  console_log_dir="/var/log/strato/console", socket_dir="/run/strato")


def full_server() -> dict:
    def drive(n: int, volume: str, device: str, channel: str, media: str = "disk", boot: int | None = None) -> dict:
        return {"uuid": f"00000000-0000-4000-8000-{n:012d}", "pool": None, "volume": volume, "media": media,
                "device": device, "dev_channel": channel, "boot_order": boot}

    return {
        "uuid": "11111111-2222-4333-8444-555555555555", "name": "web <1> & \"db\"\nline2", "cpu": 3000,
        "mem": (512 << 20) + 1, "smp": 4, "cpus_instead_of_cores": True, "enable_numa": True,
        "hv_relaxed": True, "hv_tsc": True, "cpu_model": "kvm64", "vnc_password": "p<&>'\"ssword-long",
        "context": True,
        "drives": [
            drive(1, "boot", "virtio", "0:0", boot=1), drive(2, "data", "virtio", "7:3"),
            drive(3, "cd", "ide", "1:1", media="cdrom", boot=2), drive(4, "vcd", "virtio", "0:1", media="cdrom"),
            drive(5, "s", "scsi", "2:5"), drive(6, "scd", "scsi", "0:0", media="cdrom"),
            drive(7, "on-ceph", "virtio", "0:2"),
        ],
        "nics": [{"mac": "22:00:00:00:00:01", "model": "virtio", "network": None, "boot_order": 3},
                 {"mac": "22:00:00:00:00:02", "model": "e1000", "network": "private-net", "boot_order": None}],
    }


def render_full() -> Domain:
    spec = wire.convert(full_server(), wire.Server, "server")
    volumes = {d.uuid: VolumeRef(f"/pool/{d.volume}", "raw" if d.volume == "cd" else "qcow2") for d in spec.drives}
    volumes[spec.drives[-1].uuid] = VolumeRef("rbd/on-ceph", "raw", RbdRef(
        name="rbd/on-ceph", monitors=(("10.0.0.1", 6789), ("mon-b", None)), user="strato",
        secret_uuid="99999999-8888-4777-8666-555555555555"))
    return build_domain(spec, HOST, volumes, active_since="2024-05-06T07:08:09Z")


def test_golden_domain() -> None:
    xml = render_full().to_xml() + "\n"
    if os.environ.get("STRATO_REGEN_GOLDEN"):
        GOLDEN.write_text(xml)
    assert xml == GOLDEN.read_text()


def test_render_parse_round_trip() -> None:
    domain = render_full()
    assert Domain.from_xml(domain.to_xml()) == domain


def test_every_element_class_is_exercised() -> None:
    """checkprops-style: the golden domain uses every element class and sets every declared
    field to a non-default value somewhere (or the field is listed here as unused). A field
    an abstract base declares (`Device.alias`) counts once, for all its subclasses."""
    unused = {
        ("Os", "boot_menu"), ("Os", "arch"), ("Os", "type"), ("HyperV", "vapic"), ("HyperV", "mode"),
        ("Features", "pae"), ("Timer", "tickpolicy"), ("Disk", "cache"),
        ("Disk", "driver_name"), ("Interface", "bridge"), ("Interface", "target_dev"), ("Graphics", "port"),
        ("Serial", "mode"), ("SysInfo", "bios"), ("Listen", "type"), ("Cpu", "cells"),
        ("Topology", "dies"), ("Topology", "threads"), ("NumaCell", "unit"), ("PciAddress", "domain"),
        ("PciAddress", "function"), ("DriveAddress", "target"), ("Clock", "offset"), ("MemBalloon", "model"),
        ("Domain", "memory_unit"), ("Domain", "on_poweroff"), ("Domain", "on_reboot"), ("Domain", "on_crash"),
        ("Disk", "backing"),  # read from libvirt's live XML only: test_a_live_overlay_names_its_backing_file
    }
    instantiated: set[str] = set()
    used: set[tuple[str, str]] = set()

    def owner(cls: type, name: str) -> str:
        return next(c.__name__ for c in cls.__mro__ if name in inspect.get_annotations(c))

    def walk(el: Element) -> None:
        instantiated.add(type(el).__name__)
        for f in dataclasses.fields(el):
            value = getattr(el, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if value not in (default, [], None):
                used.add((owner(type(el), f.name), f.name))
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, Element):
                    walk(child)

    walk(render_full())
    classes = [c for c in vars(domain_xml).values()
               if isinstance(c, type) and issubclass(c, Element) and c.__module__ == domain_xml.__name__]
    concrete = {c.__name__ for c in classes if hasattr(c, "TAG")}
    assert concrete <= instantiated, "element classes the golden domain never uses"
    declared = {(c.__name__, name) for c in classes for name in inspect.get_annotations(c)}
    missing = declared - used - unused
    assert not missing, f"declared but never set by the golden domain: {sorted(missing)}"


def test_virtio_slots_follow_channels() -> None:
    disks = {d.alias: d for d in render_full().disks()}
    data = disks["ua-drive-00000000-0000-4000-8000-000000000002"]
    assert data.address == PciAddress(bus=2, slot=1 + 2 * 6 + 3)  # 7:3 → bridge 2, controller 2 of it
    assert [d.target for d in render_full().disks() if d.bus == "virtio"] == ["vda", "vdb", "vdc", "vdd"]


def test_numa_split_and_quota() -> None:
    cells = numa_cells(smp=5, mem_mib=1001, cores_per_node=2)
    assert [(c.cpus, c.memory) for c in cells] == [("0-1", 334 * 1024), ("2-3", 334 * 1024), ("4", 333 * 1024)]
    assert cpu_quota(500, 2000) == 25_000
    assert cpu_quota(1, 100_000) == 1_000  # floor
    assert [_disk_letters(n) for n in (0, 25, 26, 27, 701, 702)] == ["a", "z", "aa", "ab", "zz", "aaa"]


@pytest.mark.parametrize("bad", [
    {"vnc_password": ""}, {"vnc_password": "a\x01b"}, {"uuid": "nope"}, {"smp": True}, {"context": "yes"},
    {"drives": [{"uuid": "00000000-0000-4000-8000-000000000001", "pool": None, "volume": "v", "media": "disk",
                 "device": "sata", "dev_channel": "0:0", "boot_order": None}]},
])
def test_invalid_specs(bad: dict) -> None:
    with pytest.raises(msgspec.ValidationError):
        wire.convert({**full_server(), **bad}, wire.Server)


def test_duplicate_channels_refused() -> None:
    server = full_server()
    server["drives"][1]["dev_channel"] = "0:0"
    with pytest.raises(msgspec.ValidationError, match="virtio 0:0"):
        wire.convert(server, wire.Server)


def test_struct_encodes_like_the_dict() -> None:
    """The orchestrator may send the dict or build the Struct: the same bytes either way."""
    raw = full_server()
    assert json.dumps(wire.convert(raw, wire.Server), default=wire.to_builtins) == json.dumps(raw)


def test_errors_name_the_path() -> None:
    server = full_server()
    server["drives"][2]["dev_channel"] = "2:0"
    with pytest.raises(msgspec.ValidationError, match=r"^params\.server\.drives\.2: dev_channel 2:0 is out of range"):
        wire.convert({"server": server}, wire.DomainSpec)
    server = full_server()
    del server["mem"]
    with pytest.raises(msgspec.ValidationError, match="missing required field `mem`"):
        wire.convert({"server": server}, wire.DomainSpec)


def test_rbd_pool_and_secret_xml() -> None:
    """The libvirt objects of an RBD pool: monitors, cephx user, the secret, RADOS timeouts."""
    from agents.xml.storage import RbdConfigOpts, RbdOption, RbdPool, Secret, SourceHost

    pool = RbdPool(name="p-ceph", source_name="rbd", hosts=[SourceHost(name="127.0.0.1", port=6789)],
                   auth_username="strato", secret_uuid="99999999-8888-4777-8666-555555555555",
                   config_opts=RbdConfigOpts(options=[RbdOption(name="client_mount_timeout", value="5")]))
    xml = pool.to_xml()
    assert RbdPool.from_xml(xml) == pool
    assert "<auth type=\"ceph\" username=\"strato\">" in xml and "<rbd:option name=\"client_mount_timeout\"" in xml
    secret = Secret(usage_name="p-ceph")
    assert Secret.from_xml(secret.to_xml()) == secret
    node = ET.fromstring(secret.to_xml())
    assert (node.get("private"), node.find("usage").get("type"), node.findtext("usage/name")) == ("yes", "ceph",
                                                                                                 "p-ceph")
def test_a_live_overlay_names_its_backing_file() -> None:
    """libvirt reports a qcow2 overlay's chain as <backingStore> (a copy-on-write clone)."""
    live = Domain.from_xml("""<domain type='qemu'><name>x</name><uuid>6f6c1b5e-0b8a-4a57-9b1c-2a7d3f0e9c11</uuid>
      <memory>1</memory><vcpu>1</vcpu><os/><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/p/clone.qcow2'/>
        <backingStore type='file'><format type='qcow2'/><source file='/p/base-1.qcow2'/><backingStore/></backingStore>
        <target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/p/flat.qcow2'/>
        <backingStore/><target dev='vdb' bus='virtio'/></disk></devices></domain>""")
    assert [(d.source, d.backing) for d in live.disks()] == [("/p/clone.qcow2", "/p/base-1.qcow2"),
                                                             ("/p/flat.qcow2", None)]
    assert "backingStore" not in render_full().to_xml()  # Strato never writes it: libvirt reads the chain
