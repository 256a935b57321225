"""Live migration: the target's preparation and the source's peer-to-peer migration.

The target host renders the server's domain as it would start it (its own name prefix, pool
paths, console log and socket directories) and creates the volumes that copy-storage will fill;
the source then migrates its running domain peer to peer (its libvirtd talks to the target's
directly, QEMU streams to the target's migration address) with a destination definition that is
its own live one with the target's names and paths: everything else (device addresses, the
metadata with the run's start time) stays as it was, so the guest never notices.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from agents import wire
from agents.errors import AgentError
from agents.translate import DRIVE_ALIAS_PREFIX

MIGRATE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


def destination_xml(source_xml: str, target_xml: str) -> str:
    """The source's live definition with the target's disk sources, serial sockets and logs
    and NIC networks (matched by drive alias, serial port and MAC)."""
    source, target = ET.fromstring(source_xml), ET.fromstring(target_xml)
    # The name stays the source's (libvirt insists); VIR_MIGRATE_PARAM_DEST_NAME renames.
    disks = {d.find("alias").get("name"): d for d in target.iterfind("devices/disk")  # type: ignore[union-attr]
             if d.find("alias") is not None}
    for disk in source.iterfind("devices/disk"):
        alias = disk.find("alias")
        name = alias.get("name", "") if alias is not None else ""
        if not name.startswith(DRIVE_ALIAS_PREFIX) or name not in disks:
            continue
        wanted, here = disks[name].find("source"), disk.find("source")
        if wanted is not None and here is not None:
            for attr in ("file", "dev", "name"):
                if attr in wanted.attrib:
                    here.set(attr, wanted.attrib[attr])
    serials = {s.find("target").get("port"): s for s in target.iterfind("devices/serial")  # type: ignore[union-attr]
               if s.find("target") is not None}
    for kind in ("serial", "console"):
        for serial in source.iterfind(f"devices/{kind}"):
            port = serial.find("target")
            wanted = serials.get(port.get("port", "0") if port is not None and kind == "serial" else "0")
            if wanted is None:
                continue
            for child in ("source", "log"):
                here, there = serial.find(child), wanted.find(child)
                if here is not None and there is not None:
                    here.attrib.update({k: v for k, v in there.attrib.items() if k in ("path", "file")})
    networks = {i.find("mac").get("address"): i.find("source") for i in target.iterfind("devices/interface")  # type: ignore[union-attr]
                if i.find("mac") is not None}
    for nic in source.iterfind("devices/interface"):
        mac, here = nic.find("mac"), nic.find("source")
        wanted = networks.get(mac.get("address")) if mac is not None else None
        if here is not None and wanted is not None and "network" in wanted.attrib:
            here.attrib.clear()
            here.set("network", wanted.attrib["network"])
    return ET.tostring(source, encoding="unicode")


def migrate(conn: libvirt.virConnect, dom: libvirt.virDomain, params: wire.MigrateOut) -> None:
    """Move the running ``dom`` to the target, blocking until done; on failure it runs here still."""
    if not dom.isActive():
        raise AgentError("invalid", f"server {params.uuid} is not running here")
    live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    typed: dict[str, object] = {
        libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{params.target_address}",
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: destination_xml(live, params.target_xml),
        libvirt.VIR_MIGRATE_PARAM_DEST_NAME: ET.fromstring(params.target_xml).findtext("name") or dom.name(),
    }
    # The API node moves only drives that the target sees at the same path (or that it copies);
    # libvirt cannot tell a shared directory from a local one unless it is NFS, GlusterFS, Ceph…,
    # and would refuse a shared pool mounted any other way as "unsafe".
    flags = MIGRATE_FLAGS | libvirt.VIR_MIGRATE_UNSAFE
    if params.copy_drives:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        typed[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = [
            d.find("target").get("dev") for d in ET.fromstring(live).iterfind("devices/disk")  # type: ignore[union-attr]
            if (a := d.find("alias")) is not None and a.get("name", "").removeprefix(DRIVE_ALIAS_PREFIX)
            in params.copy_drives]
    if params.max_downtime_ms:
        dom.migrateSetMaxDowntime(params.max_downtime_ms, 0)
    try:
        dom.migrateToURI3(params.target_uri, typed, flags)
    except libvirt.libvirtError as err:
        raise AgentError("libvirt", f"migration to {params.target_address} failed: {err.get_error_message()}") from None

