"""libvirt storage pool and volume XML, declared like the domain elements."""

from __future__ import annotations

from typing import Literal

from agents.xml.model import Attr, Element


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
