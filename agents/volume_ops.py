"""Volume steps that directory and RBD pools take alike through libvirt's storage API."""

from __future__ import annotations

import libvirt

from agents.errors import AgentError
from agents.xml.storage import Volume


def copy_into(pool: libvirt.virStoragePool, source: libvirt.virStorageVol, name: str, fmt: str,
              size: int | None) -> libvirt.virStorageVol:
    """A new volume ``name`` in ``pool`` with ``source``'s content (libvirt picks the pool's way to copy:
    a file copy for a directory, a protected snapshot and a clone for RBD), grown to ``size`` if given."""
    capacity = source.info()[1]
    if size is not None and size < capacity:
        raise AgentError("invalid", f"size {size} is smaller than the source's {capacity}")
    vol = pool.createXMLFrom(Volume(name=name, capacity=capacity, format=fmt).to_xml(), source, 0)
    if size is not None and size > capacity:
        vol.resize(size, 0)
    return vol


def grow(vol: libvirt.virStorageVol, name: str, size: int) -> None:
    """``vol`` grown to ``size``; shrinking is refused (the guest's filesystem would be cut)."""
    capacity = vol.info()[1]
    if size < capacity:
        raise AgentError("invalid", f"volume {name!r} is {capacity} bytes; shrinking is refused")
    if size > capacity:
        vol.resize(size, 0)
