"""libvirt network XML as small typed elements, declared like the domain elements.

Only conversion here; which kind of network, which bridge, which reservations is policy in
`agents/networks.py`.
"""

from __future__ import annotations

from typing import Literal

from agents.xml.model import Attr, Child, Children, Element


class DhcpHost(Element, tag="host"):
    """One MAC → IP reservation (the `ip-dhcp-host` section of virNetworkUpdate)."""

    mac: str = Attr("@mac")
    ip: str = Attr("@ip")
    name: str | None = Attr("@name", default=None)


class DhcpRange(Element, tag="range"):
    start: str = Attr("@start")
    end: str = Attr("@end")


class Dhcp(Element, tag="dhcp"):
    ranges: list[DhcpRange] = Children()
    hosts: list[DhcpHost] = Children()


class IpDef(Element, tag="ip"):
    address: str = Attr("@address")
    prefix: int = Attr("@prefix")
    dhcp: Dhcp | None = Child(default=None)


class Network(Element, tag="network"):
    name: str = Attr("name")
    uuid: str | None = Attr("uuid", default=None)
    forward: Literal["nat", "bridge", "route"] | None = Attr("forward/@mode", default=None)
    bridge: str | None = Attr("bridge/@name", default=None)
    stp: bool | None = Attr("bridge/@stp", default=None, true="on", false="off")
    mtu: int | None = Attr("mtu/@size", default=None)
    ip: IpDef | None = Child(default=None)

    def hosts(self) -> list[DhcpHost]:
        return [] if self.ip is None or self.ip.dhcp is None else list(self.ip.dhcp.hosts)
