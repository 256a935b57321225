"""libvirt storage pool and volume XML, declared like the domain elements."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Literal

from agents.xml.model import Attr, Child, Children, Element


class DirPool(Element, tag="pool", match={"type": "dir"}):
    name: str = Attr("name")
    path: str = Attr("target/path")


class Volume(Element, tag="volume"):
    name: str = Attr("name")
    capacity: int = Attr("capacity")
    capacity_unit: str = Attr("capacity/@unit", default="bytes")
    allocation: int | None = Attr("allocation", default=None)
    path: str | None = Attr("target/path", default=None)
    format: Literal["raw", "qcow2", "iso"] | None = Attr("target/format/@type", default="qcow2")
    backing: str | None = Attr("backingStore/path", default=None)  # an overlay's base (read only)


RBD_NS = "http://libvirt.org/schemas/storagepool/rbd/1.0"
ET.register_namespace("rbd", RBD_NS)


class SourceHost(Element, tag="host"):
    """A Ceph monitor (``host:port``; a port other than 3300 speaks msgr v1)."""

    name: str = Attr("@name")
    port: int | None = Attr("@port", default=None)


class RbdOption(Element, tag=f"{{{RBD_NS}}}option"):
    name: str = Attr("@name")
    value: str = Attr("@value")


class RbdConfigOpts(Element, tag=f"{{{RBD_NS}}}config_opts"):
    """RADOS options libvirtd sets on its own Ceph connection (after its defaults)."""

    options: list[RbdOption] = Children()


class RbdPool(Element, tag="pool", match={"type": "rbd"}):
    name: str = Attr("name")
    uuid: str | None = Attr("uuid", default=None)  # libvirt's; kept when the pool is redefined
    source_name: str = Attr("source/name")  # the Ceph pool
    hosts: list[SourceHost] = Children("source")
    auth_type: str = Attr("source/auth/@type", default="ceph")
    auth_username: str = Attr("source/auth/@username")
    secret_uuid: str = Attr("source/auth/secret/@uuid")
    config_opts: RbdConfigOpts | None = Child(default=None)


class Secret(Element, tag="secret"):
    """A libvirt secret holding a cephx key (the value is set apart, never in the XML)."""

    ephemeral: bool = Attr("@ephemeral", default=False)
    private: bool = Attr("@private", default=True)
    uuid: str | None = Attr("uuid", default=None)
    description: str | None = Attr("description", default=None)
    usage_type: str = Attr("usage/@type", default="ceph")
    usage_name: str = Attr("usage/name")
