"""Storage pools and qcow2 volumes through libvirt's storage API.

Two kinds of pool: directories of qcow2 files (here) and Ceph RBD pools (`agents/rbd.py`); each
public method hands an RBD pool's work to its `RbdStorage`, the seam where the kinds part.

Every method here blocks (libvirt and qemu-img calls); the protocol layer runs them in threads.
Names and sizes arrive checked by their `agents/wire.py` types (`VolumeName`, `Size`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import libvirt

from agents import wire
from agents.errors import AgentError
from agents.rbd import RbdPoolConfig, RbdStorage
from agents.translate import VolumeRef
from agents.volume_ops import copy_into, grow
from agents.xml.domain import Domain
from agents.xml.storage import DirPool, Volume

log = logging.getLogger(__name__)

_IMPORT_FORMATS = ("raw", "qcow2")


@dataclass
class _Flatten:
    """One flatten in progress: what cancels it (the qemu-img process, or the guest's block job)."""

    proc: subprocess.Popen[bytes] | None = None
    domain: libvirt.virDomain | None = None
    disk: str | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class PoolConfig:
    name: str  # Strato's name; libvirt's is prefix + name
    path: str


class Storage:
    def __init__(self, conn: libvirt.virConnect, prefix: str, pools: list[PoolConfig],
                 rbd_pools: list[RbdPoolConfig] | None = None) -> None:
        rbd_pools = rbd_pools or []
        if not pools and not rbd_pools:
            raise ValueError("at least one pool is needed")
        self.conn = conn
        self.prefix = prefix
        self.pools = {p.name: p for p in pools}  # directory pools
        self.rbd = {p.name: RbdStorage(conn, prefix, p) for p in rbd_pools}
        if self.rbd.keys() & self.pools.keys():
            raise ValueError(f"pool names used twice: {', '.join(sorted(self.rbd.keys() & self.pools.keys()))}")
        self.default = pools[0].name if pools else rbd_pools[0].name
        # Flattens running now, by volume path; the lock makes "cancelled" and the final
        # replace of the volume file one step, so a cancel that returned is never undone.
        self._flattens: dict[str, _Flatten] = {}
        self._flatten_lock = threading.Lock()

    def _rbd_of(self, pool: str | None) -> RbdStorage | None:
        """The RBD pool that does this call's work, or None for a directory pool."""
        return self.rbd.get(pool or self.default)

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
        for rbd in self.rbd.values():
            conflict = rbd.ensure()
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
        return facts + [f for f in (rbd.facts() for rbd in self.rbd.values()) if f is not None]

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
                           format=desc.format, backing=desc.backing)

    def resolve(self, pool: str | None, name: str) -> VolumeRef:
        if (rbd := self._rbd_of(pool)) is not None:
            return rbd.resolve(name)
        _pool_name, vol = self._volume(pool, name)
        fmt = Volume.from_xml(vol.XMLDesc(0)).format
        return VolumeRef(path=vol.path(), format="raw" if fmt == "raw" else "qcow2")

    def create(self, pool: str | None, name: str, size: int) -> wire.Volume:
        if (rbd := self._rbd_of(pool)) is not None:
            return rbd.create(name, size)
        pool_name, lv = self._pool(pool)
        self._refuse_existing(lv, pool_name, name)
        vol = lv.createXML(Volume(name=name, capacity=size, format="qcow2").to_xml(), 0)
        return self.describe(pool_name, vol)

    def import_(self, pool: str | None, name: str, source_path: str) -> wire.Volume:
        rbd = self._rbd_of(pool)
        if rbd is None:
            pool_name, lv = self._pool(pool)
            self._refuse_existing(lv, pool_name, name)
        info = _image_info(source_path)
        fmt = info.get("format")
        if fmt not in _IMPORT_FORMATS:
            raise AgentError("invalid", f"{source_path}: format {fmt!r} is not raw or qcow2")
        if info.get("backing-filename"):
            # A backing file could point anywhere on the host; imports must be self-contained.
            raise AgentError("invalid", f"{source_path}: images with a backing file are refused")
        if rbd is not None:
            return rbd.import_(name, source_path, info)
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
        if (rbd := self._rbd_of(pool)) is not None:
            return rbd.clone(source, name, size)
        pool_name, src = self._volume(pool, source)
        _pool_name, lv = self._pool(pool_name)
        self._refuse_existing(lv, pool_name, name)
        vol = copy_into(lv, src, name, "qcow2", size)
        return self.describe(pool_name, vol)

    def resize(self, pool: str | None, name: str, size: int) -> wire.Volume:
        if (rbd := self._rbd_of(pool)) is not None:
            return rbd.resize(name, size)
        pool_name, vol = self._volume(pool, name)
        self._cancel(vol.path())  # a flatten would put back the old size (it retries afterwards)
        grow(vol, name, size)
        return self.describe(pool_name, vol)

    def delete(self, pool: str | None, name: str) -> wire.Empty:
        if (rbd := self._rbd_of(pool)) is not None:
            return rbd.delete(name)
        _pool_name, vol = self._volume(pool, name)
        path = vol.path()
        self._cancel(path)  # a flatten of a deleted volume has nothing left to do
        vol.delete(0)
        for partial in (".flat", ".cow"):  # what an agent killed mid-flatten or mid-clone left
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(os.path.dirname(path), f".{name}{partial}"))
        return wire.Empty()

    def export(self, pool: str | None, name: str, path: str) -> wire.Empty:
        """The volume as a raw image in the file ``path``."""
        if (rbd := self._rbd_of(pool)) is not None:
            return rbd.export(name, path)
        _pool_name, vol = self._volume(pool, name)
        fmt = Volume.from_xml(vol.XMLDesc(0)).format or "qcow2"
        _run(["qemu-img", "convert", "-q", "-U", "-f", fmt, "-O", "raw", vol.path(), path])
        return wire.Empty()

    # -- copy-on-write clones (directory pools) ----------------------------------------------

    def cow_clone(self, pool: str | None, source: str, name: str, base: str, size: int | None,
                  keep_source: bool) -> wire.CowCloned:
        """See `wire.VolumeCowClone`. Every step leaves a usable source: the base is a hard link
        (the same file under a second name), overlays are made under a hidden name and renamed
        into place, and a retry skips what was done."""
        if self._rbd_of(pool) is not None:  # RBD clones are copy-on-write already (volume.clone)
            raise AgentError("invalid", "qcow2 overlays are made in directory pools only")
        pool_name, src = self._volume(pool, source)
        _pool_name, lv = self._pool(pool_name)
        self._refuse_existing(lv, pool_name, name)
        directory = self.pools[pool_name].path
        src_path, base_path = src.path(), os.path.join(directory, base)
        self._cancel(src_path)  # the source's file is about to become the base
        info = _image_info(src_path)
        capacity = int(info["virtual-size"])
        if size is not None and size < capacity:
            raise AgentError("invalid", f"size {size} is smaller than the source's {capacity}")
        if not os.path.exists(base_path):
            os.link(src_path, base_path)
        base_info = _image_info(base_path)
        if not keep_source and info.get("backing-filename") != base:
            if not os.path.samefile(src_path, base_path):
                raise AgentError("invalid", f"base {base!r} exists and is not volume {source!r}")
            _replace_with_overlay(src_path, base, base_info["format"], capacity)
        clone_path = os.path.join(directory, name)
        _replace_with_overlay(clone_path, base, base_info["format"], max(capacity, size or 0))
        lv.refresh(0)
        return wire.CowCloned(source=self.describe(pool_name, lv.storageVolLookupByName(source)),
                              clone=self.describe(pool_name, lv.storageVolLookupByName(name)),
                              base=self.describe(pool_name, lv.storageVolLookupByName(base)))

    def flatten(self, pool: str | None, name: str, rate: int | None) -> wire.Volume:
        if self._rbd_of(pool) is not None:
            raise AgentError("invalid", "qcow2 overlays are flattened in directory pools only")
        pool_name, vol = self._volume(pool, name)
        path = vol.path()
        job = _Flatten()
        with self._flatten_lock:
            if path in self._flattens:
                raise AgentError("invalid", f"volume {name!r} is being flattened already")
            self._flattens[path] = job
        try:
            if _image_info(path, shared=True).get("backing-filename"):
                user = self._running_user(path)
                log.info("flattening %s by %s", name, "a copy" if user is None else "libvirt's block pull")
                if user is None:
                    self._flatten_offline(job, path, rate)
                else:
                    self._block_pull(job, path, *user, rate)
        finally:
            with self._flatten_lock:
                del self._flattens[path]
            job.done.set()
        _pool_name, lv = self._pool(pool_name)
        lv.refresh(0)
        return self.describe(pool_name, lv.storageVolLookupByName(name))

    def cancel_flatten(self, pool: str | None, name: str) -> wire.Empty:
        if self._rbd_of(pool) is not None:
            return wire.Empty()
        _pool_name, vol = self._volume(pool, name)
        self._cancel(vol.path())
        return wire.Empty()

    def _cancel(self, path: str) -> None:
        """Stop the flatten of ``path`` and wait until it let go of the file."""
        with self._flatten_lock:
            job = self._flattens.get(path)
            if job is None:
                return
            job.cancelled = True
            if job.proc is not None:
                job.proc.kill()
        if job.domain is not None and job.disk is not None:
            try:
                job.domain.blockJobAbort(job.disk, 0)
            except libvirt.libvirtError as err:
                log.info("block job on %s: %s", path, err)
        job.done.wait(60)

    def _flatten_offline(self, job: _Flatten, path: str, rate: int | None) -> None:
        """A standalone copy of what the volume reads, written beside it and renamed over it."""
        flat = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.flat")
        argv = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2"]
        if rate is not None:
            argv += ["-r", str(rate)]
        # The partial file is locked while it is written: another agent on this libvirtd (a second
        # API node's) flattening the same volume waits for its turn instead of writing it too.
        holder = os.open(flat, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(holder)
            raise AgentError("invalid", "cancelled: another agent is flattening it") from None
        try:
            with self._flatten_lock:
                if job.cancelled:
                    raise AgentError("invalid", "cancelled")
                job.proc = subprocess.Popen([*argv, path, flat], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
            _out, err = job.proc.communicate()
            with self._flatten_lock:
                if job.cancelled:
                    raise AgentError("invalid", "cancelled")
                if job.proc.returncode != 0:
                    raise AgentError("internal", f"qemu-img failed: {err.decode(errors='replace').strip()}")
                if self._running_user(path) is not None:  # a guest opened it meanwhile: its writes count
                    raise AgentError("invalid", "cancelled: a guest started on the volume")
                os.replace(flat, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(holder).st_ino == os.stat(flat).st_ino:  # ours, not another agent's
                    os.unlink(flat)
            raise
        finally:
            os.close(holder)

    def _running_user(self, path: str) -> tuple[libvirt.virDomain, str] | None:
        """The running guest of this agent whose disk is ``path``, and that disk's target."""
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            if not dom.name().startswith(self.prefix):
                continue
            for disk in Domain.from_xml(dom.XMLDesc(0)).disks():
                if disk.source == path:
                    return dom, disk.target
        return None

    def _block_pull(self, job: _Flatten, path: str, dom: libvirt.virDomain, disk: str, rate: int | None) -> None:
        """libvirt's block pull: the guest keeps running while its disk copies the chain in."""
        with self._flatten_lock:
            if job.cancelled:
                raise AgentError("invalid", "cancelled")
            job.domain, job.disk = dom, disk
        dom.blockPull(disk, rate or 0, libvirt.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES if rate else 0)
        while dom.blockJobInfo(disk, 0):
            time.sleep(0.2)
        live = next((d for d in Domain.from_xml(dom.XMLDesc(0)).disks() if d.source == path), None)
        if job.cancelled:
            raise AgentError("invalid", "cancelled")
        if live is None or live.backing is not None:
            raise AgentError("internal", f"the block pull of {os.path.basename(path)} did not finish")

    def list(self, pool: str | None) -> list[wire.Volume]:
        if (rbd := self._rbd_of(pool)) is not None:
            return rbd.list()
        pool_name, lv = self._pool(pool)
        lv.refresh(0)
        described = []
        for vol in lv.listAllVolumes(0):
            try:
                described.append(self.describe(pool_name, vol))
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
                # deleted between the listing and its reading (a delete finishing meanwhile): not there
        return sorted(described, key=lambda v: v.name)


def _image_info(path: str, shared: bool = False) -> dict[str, Any]:
    """qemu-img's facts of an image; ``shared`` reads one a running guest holds (no lock taken)."""
    if not os.path.isfile(path):
        raise AgentError("notfound", f"no such file: {path}")
    out = _run(["qemu-img", "info", "--output=json", *(["-U"] if shared else []), path])
    return json.loads(out)


def _replace_with_overlay(path: str, base: str, base_format: str, capacity: int) -> None:
    """``path`` becomes (atomically) a new qcow2 overlay on the volume ``base`` beside it.

    The backing file is named relative to the overlay (QEMU resolves it in the overlay's
    directory): a pool shared by hosts that mount it at different paths, or a chain copied
    into another directory, still finds its bases."""
    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.cow")
    try:
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", base, partial,
              str(capacity)])
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A flatten's qemu-img must not outlive its agent (an API node that stops takes its agent
    # along); the next agent flattens again from the start.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _run(argv: list[str]) -> str:
    """Run a tool with an argument list (never a shell); failures become `internal` errors."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AgentError("internal", f"{argv[0]} failed: {proc.stderr.strip()}")
    return proc.stdout
