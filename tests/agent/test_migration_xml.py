"""The destination definition of a live migration (agents/migration.py): the source's live domain with
the target's disk sources, serial sockets, logs and NIC networks, and nothing else changed."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agents.migration import destination_xml

SOURCE = """<domain type='qemu'><name>a-1</name><uuid>u</uuid>
<devices>
 <disk type='file' device='disk'><source file='/a/pool/d.qcow2'/><target dev='vda' bus='virtio'/>
  <alias name='ua-drive-d'/><address type='pci' domain='0x0000' bus='0x01' slot='0x01' function='0x0'/></disk>
 <disk type='file' device='disk'><source file='/shared/e.qcow2'/><target dev='vdb' bus='virtio'/>
  <alias name='ua-drive-e'/></disk>
 <interface type='network'><mac address='52:54:00:00:00:01'/><source network='a-net-x' bridge='virbr9'/></interface>
 <serial type='unix'><source mode='bind' path='/a/s/u.console'/><log file='/a/c/a-1.log' append='off'/>
  <target type='isa-serial' port='0'/></serial>
 <serial type='unix'><source mode='bind' path='/a/s/u.context'/><target type='isa-serial' port='1'/></serial>
 <console type='unix'><source mode='bind' path='/a/s/u.console'/><log file='/a/c/a-1.log' append='off'/>
  <target type='serial' port='0'/></console>
</devices></domain>"""

TARGET = """<domain type='qemu'><name>b-1</name><uuid>u</uuid>
<devices>
 <disk type='file' device='disk'><source file='/b/pool/d.qcow2'/><target dev='vda' bus='virtio'/>
  <alias name='ua-drive-d'/></disk>
 <disk type='file' device='disk'><source file='/shared/e.qcow2'/><target dev='vdb' bus='virtio'/>
  <alias name='ua-drive-e'/></disk>
 <interface type='network'><mac address='52:54:00:00:00:01'/><source network='b-net-x'/></interface>
 <serial type='unix'><source mode='bind' path='/b/s/u.console'/><log file='/b/c/b-1.log' append='off'/>
  <target port='0'/></serial>
 <serial type='unix'><source mode='bind' path='/b/s/u.context'/><target port='1'/></serial>
</devices></domain>"""


def test_destination_takes_the_targets_paths_and_keeps_the_rest() -> None:
    out = ET.fromstring(destination_xml(SOURCE, TARGET))
    assert out.findtext("name") == "a-1"  # libvirt renames through VIR_MIGRATE_PARAM_DEST_NAME
    assert [d.find("source").get("file") for d in out.iterfind("devices/disk")] == [  # type: ignore[union-attr]
        "/b/pool/d.qcow2", "/shared/e.qcow2"]
    assert out.find("devices/disk/address").get("slot") == "0x01"  # type: ignore[union-attr]
    assert [(s.find("source").get("path"), s.find("log").get("file") if s.find("log") is not None else None)  # type: ignore[union-attr]
            for s in out.iterfind("devices/serial")] == [("/b/s/u.console", "/b/c/b-1.log"), ("/b/s/u.context", None)]
    console = out.find("devices/console")
    assert console.find("source").get("path") == "/b/s/u.console"  # type: ignore[union-attr]
    assert console.find("log").get("file") == "/b/c/b-1.log"  # type: ignore[union-attr]
    assert out.find("devices/interface/source").attrib == {"network": "b-net-x"}  # type: ignore[union-attr]
