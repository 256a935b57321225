"""Storage pools and qcow2 volumes through libvirt's storage API.

Every method here blocks (libvirt and qemu-img calls); the protocol layer runs them in threads.
Names and sizes arrive checked by their `agents/wire.py` types (`VolumeName`, `Size`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import libvirt

from agents import wire
from agents.errors import AgentError
from agents.translate import VolumeRef
from agents.xml.storage import DirPool, Volume

log = logging.getLogger(__name__)

_IMPORT_FORMATS = ("raw", "qcow2")


@dataclass(frozen=True)
class PoolConfig:
    name: str  # Strato's name; libvirt's is prefix + name
    path: str


class Storage:
    def __init__(self, conn: libvirt.virConnect, prefix: str, pools: list[PoolConfig]) -> None:
        if not pools:
            raise ValueError("at least one pool is needed")
        self.conn = conn
        self.prefix = prefix
        self.pools = {p.name: p for p in pools}
        self.default = pools[0].name

    # -- pools ------------------------------------------------------------------------------

    def ensure_pools(self) -> None:
        """Each configured pool exists in libvirt as a `dir` pool, active and autostarted.

        Another agent of this installation may be doing the same at this moment (``strato libdrives
        import`` while ``strato serve`` starts its agent): what it defined or started first counts as
        done.  A pool of this name pointing at another directory belongs to another configuration
        (another data directory on this libvirtd): it is never re-pointed, and this agent refuses to run.
        """
        for pool in self.pools.values():
            # The conflict is raised here, after _ensure_pool returned: no libvirt object of the
            # connection stays referenced by the traceback, so the connection can close at once.
            conflict = self._ensure_pool(pool)
            if conflict is not None:
                raise AgentError("invalid", conflict)

    def _ensure_pool(self, pool: PoolConfig) -> str | None:
        """One pool defined, active and autostarted; or why another configuration's pool is in the way."""
        os.makedirs(pool.path, exist_ok=True)
        name = self.prefix + pool.name
        lv = self._lookup_pool(name)
        if lv is None:
            log.info("defining storage pool %s at %s", name, pool.path)
            try:
                lv = self.conn.storagePoolDefineXML(DirPool(name=name, path=pool.path).to_xml(), 0)
            except libvirt.libvirtError:
                lv = self._lookup_pool(name)  # defined by the other agent meanwhile
                if lv is None:
                    raise
        defined = DirPool.from_xml(lv.XMLDesc(0)).path
        if os.path.realpath(defined) != os.path.realpath(pool.path):
            return (f"storage pool {name} is defined at {defined}, not at the configured {pool.path}: another "
                    f"installation on this libvirtd uses the prefix {self.prefix!r}; give this one another agent "
                    "prefix (an agent never re-points another installation's pool)")
        if not lv.isActive():
            try:
                lv.create(0)
            except libvirt.libvirtError:
                if not lv.isActive():  # not started by the other agent meanwhile
                    raise
        if not lv.autostart():
            lv.setAutostart(1)
        return None

    def _lookup_pool(self, name: str) -> libvirt.virStoragePool | None:
        try:
            return self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            return None

    def _pool(self, name: str | None) -> tuple[str, libvirt.virStoragePool]:
        """A configured pool, active: libvirt stops a pool whose directory vanished (an unmounted
        share) at its next refresh, and nothing starts it again once the directory is back."""
        name = name or self.default
        if name not in self.pools:
            raise AgentError("notfound", f"no pool {name!r} on this host")
        lv = self.conn.storagePoolLookupByName(self.prefix + name)
        if not lv.isActive():
            try:
                lv.create(0)
                log.info("storage pool %s was inactive; started it again", lv.name())
            except libvirt.libvirtError as err:
                if not lv.isActive():  # not started by another agent meanwhile
                    raise AgentError("libvirt", f"storage pool {lv.name()} is not active and cannot be started: "
                                                f"{err}") from None
        return name, lv

    def pool_facts(self) -> list[wire.PoolFacts]:
        facts = []
        for pool in self.pools.values():
            self._pool(pool.name)  # active (a pool whose directory was back gets started)
            # The file system's own figures: libvirt's are as of the pool's last refresh.
            st = os.statvfs(pool.path)
            capacity, available = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
            allocation = capacity - st.f_bfree * st.f_frsize
            # The real path: a shared directory mounted through different links is still one pool.
            facts.append(wire.PoolFacts(name=pool.name, path=os.path.realpath(pool.path), capacity=capacity,
                                        allocation=allocation, available=available))
        return facts

    # -- volumes ----------------------------------------------------------------------------

    def _volume(self, pool: str | None, name: str) -> tuple[str, libvirt.virStorageVol]:
        pool_name, lv = self._pool(pool)
        for attempt in (1, 2):
            try:
                return pool_name, lv.storageVolLookupByName(name)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
                if attempt == 2:
                    raise AgentError("notfound", f"no volume {name!r} in pool {pool_name!r}") from None
            # A shared directory: another host may have written the file since the last refresh.
            lv.refresh(0)
        raise AssertionError("unreachable")

    def _refuse_existing(self, lv: libvirt.virStoragePool, pool_name: str, name: str) -> None:
        lv.refresh(0)
        if name in lv.listVolumes():
            raise AgentError("invalid", f"volume {name!r} already exists in pool {pool_name!r}")

    def describe(self, pool_name: str, vol: libvirt.virStorageVol) -> wire.Volume:
        desc = Volume.from_xml(vol.XMLDesc(0))
        return wire.Volume(pool=pool_name, name=vol.name(), path=vol.path(), capacity=vol.info()[1],
                           format=desc.format)

    def resolve(self, pool: str | None, name: str) -> VolumeRef:
        _pool_name, vol = self._volume(pool, name)
        fmt = Volume.from_xml(vol.XMLDesc(0)).format
        return VolumeRef(path=vol.path(), format="raw" if fmt == "raw" else "qcow2")

    def create(self, pool: str | None, name: str, size: int) -> wire.Volume:
        pool_name, lv = self._pool(pool)
        self._refuse_existing(lv, pool_name, name)
        vol = lv.createXML(Volume(name=name, capacity=size, format="qcow2").to_xml(), 0)
        return self.describe(pool_name, vol)

    def import_(self, pool: str | None, name: str, source_path: str) -> wire.Volume:
        pool_name, lv = self._pool(pool)
        self._refuse_existing(lv, pool_name, name)
        info = _image_info(source_path)
        fmt = info.get("format")
        if fmt not in _IMPORT_FORMATS:
            raise AgentError("invalid", f"{source_path}: format {fmt!r} is not raw or qcow2")
        if info.get("backing-filename"):
            # A backing file could point anywhere on the host; imports must be self-contained.
            raise AgentError("invalid", f"{source_path}: images with a backing file are refused")
        final = os.path.join(self.pools[pool_name].path, name)
        partial = os.path.join(self.pools[pool_name].path, f".{name}.importing")
        # The format is the one qemu-img detected from content, passed explicitly so a raw
        # image that happens to look like another format is never reinterpreted.
        try:
            _run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "qcow2", source_path, partial])
            os.replace(partial, final)
        except BaseException:  # a full disk, a bad image: no partial file stays behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
        lv.refresh(0)
        return self.describe(pool_name, lv.storageVolLookupByName(name))

    def clone(self, pool: str | None, source: str, name: str, size: int | None) -> wire.Volume:
        pool_name, src = self._volume(pool, source)
        _pool_name, lv = self._pool(pool_name)
        self._refuse_existing(lv, pool_name, name)
        capacity = src.info()[1]
        if size is not None and size < capacity:
            raise AgentError("invalid", f"size {size} is smaller than the source's {capacity}")
        vol = lv.createXMLFrom(Volume(name=name, capacity=capacity, format="qcow2").to_xml(), src, 0)
        if size is not None and size > capacity:
            vol.resize(size, 0)
        return self.describe(pool_name, vol)

    def resize(self, pool: str | None, name: str, size: int) -> wire.Volume:
        pool_name, vol = self._volume(pool, name)
        capacity = vol.info()[1]
        if size < capacity:
            raise AgentError("invalid", f"volume {name!r} is {capacity} bytes; shrinking is refused")
        if size > capacity:
            vol.resize(size, 0)
        return self.describe(pool_name, vol)

    def delete(self, pool: str | None, name: str) -> wire.Empty:
        _pool_name, vol = self._volume(pool, name)
        vol.delete(0)
        return wire.Empty()

    def list(self, pool: str | None) -> list[wire.Volume]:
        pool_name, lv = self._pool(pool)
        lv.refresh(0)
        return sorted((self.describe(pool_name, v) for v in lv.listAllVolumes(0)), key=lambda v: v.name)


def _image_info(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise AgentError("notfound", f"no such file: {path}")
    out = _run(["qemu-img", "info", "--output=json", path])
    return json.loads(out)


def _run(argv: list[str]) -> str:
    """Run a tool with an argument list (never a shell); failures become `internal` errors."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AgentError("internal", f"{argv[0]} failed: {proc.stderr.strip()}")
    return proc.stdout
