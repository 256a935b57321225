"""Virtual networks on this host: libvirt networks, DHCP reservations and VXLAN links.

Policy lives here (`agents/xml/network.py` only mirrors XML). A Strato network named N is the
libvirt network PREFIX + "net-" + N; it is one of three kinds:

* `nat`       libvirt NAT (`<forward mode='nat'>`) on its own bridge, whose address is the
              gateway; DHCP hands out reserved addresses only (no dynamic range), so a NIC
              without a reservation (`manual`) gets nothing.
* `bridge`    an existing bridge the operator names (`<forward mode='bridge'>`); DHCP is the
              operator's, so reservations are not pushed.
* `isolated`  a bridge with no address and no forward (a private VLAN). With a `vni` and a
              configured VXLAN endpoint (`--vxlan-local`/`--vxlan-port`), a VXLAN device is
              enslaved to the bridge and floods to every peer endpoint given (unicast head-end
              replication, no learning), so guests on other hosts share the L2 segment.

Ownership: the agent defines each network with a UUID derived from its libvirt name
(`owned_uuid`), so a network of that name with another UUID was made by someone else (another
installation that picked the same prefix, an operator): the agent refuses to start, change,
reserve on or remove it, with an error that says so, and never redefines or undefines it.

Every method blocks (libvirt, `ip`, `bridge`); the protocol layer runs them in threads.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import threading
import uuid

import libvirt

from agents import wire
from agents.errors import AgentError
from agents.xml.network import Dhcp, DhcpHost, IpDef, Network

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50
ZERO_MAC = "00:00:00:00:00:00"
OWNERSHIP = uuid.UUID("5d3c1f0e-8a51-4a0e-9f4c-6b1e2d7a9c31")  # namespace of the UUIDs agents give networks


def owned_uuid(libvirt_name: str) -> str:
    """The UUID an agent defines the network ``libvirt_name`` with: the mark that it made it."""
    return str(uuid.uuid5(OWNERSHIP, libvirt_name))


class Networks:
    def __init__(self, conn: libvirt.virConnect, prefix: str, vxlan: wire.VxlanEndpoint | None) -> None:
        self.conn = conn
        self.prefix = prefix
        self.vxlan = vxlan
        self.lock = threading.Lock()  # define/start and reservation updates, one at a time

    def libvirt_name(self, name: str) -> str:
        return f"{self.prefix}net-{name}"

    # -- networks ---------------------------------------------------------------------------

    def build(self, spec: wire.Network) -> Network:
        name = self.libvirt_name(spec.name)
        mark = owned_uuid(name)
        if spec.kind == "nat":
            return Network(name=name, uuid=mark, forward="nat", stp=False,
                           ip=IpDef(address=spec.address, prefix=spec.prefix, dhcp=Dhcp()))  # type: ignore[arg-type]
        if spec.kind == "bridge":
            return Network(name=name, uuid=mark, forward="bridge", bridge=spec.bridge)
        vxlan = spec.vni is not None and self.vxlan is not None
        return Network(name=name, uuid=mark, stp=False, mtu=1500 - VXLAN_OVERHEAD if vxlan else None)

    def ensure(self, spec: wire.Network) -> wire.NetworkEnsured:
        """Define and start the network unless it exists (an existing definition is kept: its
        guests stay attached); then bring its VXLAN link in line with the peers given."""
        name = self.libvirt_name(spec.name)
        with self.lock:
            net = self._lookup_optional(name)
            if net is None:
                log.info("defining network %s (%s)", name, spec.kind)
                try:
                    net = self.conn.networkDefineXML(self.build(spec).to_xml())
                except libvirt.libvirtError:
                    # Another agent of this installation (CLI and serve) defined it meanwhile.
                    net = self._lookup_optional(name)
                    if net is None:
                        raise
            self._refuse_foreign(net)
            if not net.isActive():
                try:
                    net.create()
                except libvirt.libvirtError:
                    if not net.isActive():  # not started by the other agent meanwhile
                        raise
            if not net.autostart():
                net.setAutostart(1)
            live = Network.from_xml(net.XMLDesc(0))
            if spec.kind == "isolated" and spec.vni is not None and self.vxlan is not None and live.bridge:
                self._sync_vxlan(name, live.bridge, spec.vni, spec.peers)
        return wire.NetworkEnsured(name=name, bridge=live.bridge, kind=spec.kind)

    def remove(self, name: str) -> wire.Empty:
        lv_name = self.libvirt_name(name)
        with self.lock:
            net = self._lookup_optional(lv_name)
            if net is not None:
                self._refuse_foreign(net)
            _run(["ip", "link", "del", _vxlan_dev(lv_name)], check=False)
            if net is not None:
                if net.isActive():
                    net.destroy()
                net.undefine()
        return wire.Empty()

    def list(self) -> list[wire.NetworkInfo]:
        out = []
        for net in self.conn.listAllNetworks(0):
            if not net.name().startswith(self.prefix + "net-") or net.UUIDString() != owned_uuid(net.name()):
                continue
            desc = Network.from_xml(net.XMLDesc(0))
            out.append(wire.NetworkInfo(name=net.name(), bridge=desc.bridge, active=net.isActive() == 1,
                                        hosts=[wire.DhcpReservation(mac=h.mac, ip=h.ip) for h in desc.hosts()]))
        return sorted(out, key=lambda n: n.name)

    # -- reservations -----------------------------------------------------------------------

    def reserve(self, name: str, mac: str, ip: str) -> wire.Reserved:
        """A MAC → IP reservation on a `nat` network (replacing another one of that MAC)."""
        lv_name = self.libvirt_name(name)
        with self.lock:
            net = self._lookup(lv_name)
            desc = Network.from_xml(net.XMLDesc(0))
            if desc.forward != "nat":
                return wire.Reserved(pushed=False)  # an operator's bridge: DHCP is the operator's
            for host in desc.hosts():
                if host.mac == mac and host.ip == ip:
                    return wire.Reserved(pushed=True)
                if host.mac == mac or host.ip == ip:
                    self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, host)
            self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, DhcpHost(mac=mac, ip=ip))
        return wire.Reserved(pushed=True)

    def release(self, name: str, mac: str) -> wire.Empty:
        lv_name = self.libvirt_name(name)
        with self.lock:
            net = self._lookup_optional(lv_name)
            if net is None:
                return wire.Empty()
            self._refuse_foreign(net)
            for host in Network.from_xml(net.XMLDesc(0)).hosts():
                if host.mac == mac:
                    self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, host)
        return wire.Empty()

    def lease_of(self, network: str, mac: str) -> str | None:
        """The IPv4 address of the DHCP lease this MAC holds on a libvirt network, if any."""
        net = self._lookup_optional(network)
        if net is None or not net.isActive():
            return None
        try:
            leases = net.DHCPLeases(mac, 0)
        except libvirt.libvirtError:
            return None
        v4 = [lease["ipaddr"] for lease in leases if lease.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4]
        return v4[0] if v4 else None

    def _update(self, net: libvirt.virNetwork, command: int, host: DhcpHost) -> None:
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if net.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host.to_xml(), flags)

    # -- VXLAN ------------------------------------------------------------------------------

    def _sync_vxlan(self, name: str, bridge: str, vni: int, peers: list[wire.VxlanEndpoint]) -> None:
        assert self.vxlan is not None
        dev = _vxlan_dev(name)
        if _run(["ip", "link", "show", dev], check=False) is None:
            _run(["ip", "link", "add", dev, "type", "vxlan", "id", str(vni), "local", self.vxlan.address,
                  "dstport", str(self.vxlan.port), "nolearning"])
            _run(["ip", "link", "set", dev, "mtu", "1500"])
        _run(["ip", "link", "set", dev, "master", bridge, "up"])
        wanted = {(p.address, p.port) for p in peers if p != self.vxlan}
        have = set()
        for line in (_run(["bridge", "fdb", "show", "dev", dev]) or "").splitlines():
            words = line.split()
            if words[:1] == [ZERO_MAC] and "dst" in words:
                port = int(words[words.index("port") + 1]) if "port" in words else self.vxlan.port
                have.add((words[words.index("dst") + 1], port))
        for address, port in have - wanted:
            _run(["bridge", "fdb", "del", ZERO_MAC, "dev", dev, "dst", address, "port", str(port)], check=False)
        for address, port in wanted - have:
            _run(["bridge", "fdb", "append", ZERO_MAC, "dev", dev, "dst", address, "port", str(port)])

    # -- lookups ----------------------------------------------------------------------------

    def _lookup_optional(self, name: str) -> libvirt.virNetwork | None:
        try:
            return self.conn.networkLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return None
            raise

    def _lookup(self, name: str) -> libvirt.virNetwork:
        net = self._lookup_optional(name)
        if net is None:
            raise AgentError("notfound", f"no network {name} on this host")
        self._refuse_foreign(net)
        return net

    def _refuse_foreign(self, net: libvirt.virNetwork) -> None:
        if net.UUIDString() != owned_uuid(net.name()):
            raise AgentError("invalid", f"libvirt network {net.name()} exists but was not made by this installation "
                                        f"(prefix {self.prefix!r}); it is left as it is. Remove or rename it, or give "
                                        "this installation another agent prefix")


def _vxlan_dev(libvirt_name: str) -> str:
    # Interface names are at most 15 bytes; the hash keeps agents sharing a host apart.
    return "svx" + hashlib.sha1(libvirt_name.encode()).hexdigest()[:10]


def _run(argv: list[str], check: bool = True) -> str | None:
    """Run a tool with an argument list; None when it failed and `check` is off."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if check:
            raise AgentError("internal", f"{' '.join(argv[:3])} failed: {proc.stderr.strip()}")
        return None
    return proc.stdout
