"""Ceph RBD pools through libvirt's `rbd` storage backend: one `RbdStorage` per configured pool.

libvirt does the pool, the volumes and the clones (``createXMLFrom`` makes a protected snapshot
of the source and an RBD clone of it: copy-on-write, instant); the cephx key lives in a libvirt
secret (usage type ceph) that both libvirtd's pool and QEMU's disks use.  What libvirt cannot do
is done by Ceph's own tools with the same key, handed over in a private file and never on a
command line: writing an image in and out (``qemu-img`` with its rbd driver) and flattening the
clones of an image that is being deleted (``rbd flatten``), so those clones stand alone.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import libvirt

from agents import wire
from agents.errors import AgentError
from agents.translate import RbdRef, VolumeRef
from agents.volume_ops import copy_into, grow
from agents.xml.storage import RbdConfigOpts, RbdOption, RbdPool, Secret, SourceHost, Volume

log = logging.getLogger(__name__)

IMPORT_FORMATS = ("raw", "qcow2")


@dataclass(frozen=True)
class RbdPoolConfig:
    name: str  # Strato's name; libvirt's pool and the secret's usage are prefix + name
    pool: str  # the Ceph pool
    user: str  # cephx id, without "client."
    keyring: str  # a keyring file with a [client.<user>] key
    monitors: tuple[str, ...]  # HOST:PORT (a port other than 3300 speaks msgr v1)
    timeout: int = 30  # seconds libvirtd waits for the cluster (client_mount_timeout)
    retry: int = 30  # seconds between attempts to reach a cluster that did not answer

    @property
    def identity(self) -> str:
        """The storage itself, the same on every host of this cluster and pool (PoolFacts.path)."""
        return f"rbd://{','.join(sorted(self.monitors))}/{self.pool}"

    def hosts(self) -> tuple[tuple[str, int | None], ...]:
        parsed = []
        for monitor in self.monitors:
            host, sep, port = monitor.rpartition(":")
            parsed.append((host.strip("[]"), int(port)) if sep and port.isdigit() else (monitor, None))
        return tuple(parsed)

    def key(self) -> str:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(self.keyring) as f:
                parser.read_file(f)
            return parser[f"client.{self.user}"]["key"].strip()
        except (OSError, KeyError, configparser.Error) as err:
            raise AgentError("invalid", f"rbd pool {self.name}: no key for client.{self.user} in "
                                        f"{self.keyring}: {err}") from None


class RbdStorage:
    def __init__(self, conn: libvirt.virConnect, prefix: str, config: RbdPoolConfig) -> None:
        self.conn = conn
        self.config = config
        self.libvirt_name = prefix + config.name
        self.active = False

    # -- pool and secret ------------------------------------------------------------------------

    def ensure(self) -> str | None:
        """Secret and pool defined, the pool started and autostarted; or why another configuration's
        objects are in the way.  A cluster that cannot be reached is logged and leaves the pool
        inactive (left out of the host's facts), so the host keeps serving its other pools."""
        secret = self._ensure_secret()
        lv = self._lookup()
        wanted = RbdPool(name=self.libvirt_name, source_name=self.config.pool,
                         hosts=[SourceHost(name=h, port=p) for h, p in self.config.hosts()],
                         auth_username=self.config.user, secret_uuid=secret,
                         config_opts=RbdConfigOpts(options=[
                             RbdOption(name="client_mount_timeout", value=str(self.config.timeout)),
                             RbdOption(name="rados_mon_op_timeout", value=str(self.config.timeout)),
                             RbdOption(name="rados_osd_op_timeout", value=str(self.config.timeout))]))
        if lv is None:
            log.info("defining rbd storage pool %s (ceph pool %s)", self.libvirt_name, self.config.pool)
            try:
                lv = self.conn.storagePoolDefineXML(wanted.to_xml(), 0)
            except libvirt.libvirtError:
                lv = self._lookup()  # defined by another agent of this installation meanwhile
                if lv is None:
                    raise
        try:
            defined = RbdPool.from_xml(lv.XMLDesc(0))
        except (TypeError, ValueError):
            defined = None
        if defined is None or defined.source_name != self.config.pool:
            return (f"storage pool {self.libvirt_name} is not the rbd pool {self.config.pool}: another "
                    "installation on this libvirtd uses this prefix; give this one another agent prefix")
        wanted = dataclasses.replace(wanted, uuid=defined.uuid)
        if defined != wanted:  # this pool, with other monitors, user, key or timeouts configured since
            log.info("redefining rbd storage pool %s for its new configuration", self.libvirt_name)
            if lv.isActive():
                lv.destroy()  # running guests keep their own connections to Ceph
            lv = self.conn.storagePoolDefineXML(wanted.to_xml(), 0)
        if not lv.isActive():
            try:
                lv.create(0)
            except libvirt.libvirtError as err:
                if not lv.isActive():
                    log.warning("rbd pool %s: Ceph not reachable, pool left out: %s", self.config.name, err)
                    return None
        self.active = True
        if not lv.autostart():
            lv.setAutostart(1)
        return None

    def _ensure_secret(self) -> str:
        usage = self.libvirt_name
        try:
            secret = self.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, usage)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise
            secret = self.conn.secretDefineXML(Secret(
                usage_name=usage, description=f"cephx key of client.{self.config.user} for Strato").to_xml(), 0)
        # The value libvirt keeps is the key's bytes; Ceph prints them in base64.
        secret.setValue(base64.b64decode(self.config.key()), 0)
        return secret.UUIDString()

    def _lookup(self) -> libvirt.virStoragePool | None:
        try:
            return self.conn.storagePoolLookupByName(self.libvirt_name)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            return None

    def _pool(self) -> libvirt.virStoragePool:
        if not self.active:
            raise AgentError("notfound", f"rbd pool {self.config.name!r} cannot reach its Ceph cluster")
        return self.conn.storagePoolLookupByName(self.libvirt_name)

    def facts(self) -> wire.PoolFacts | None:
        if not self.active:
            return None
        _state, capacity, allocation, available = self._pool().info()
        return wire.PoolFacts(name=self.config.name, path=self.config.identity, capacity=capacity,
                              allocation=allocation, available=available, kind="rbd")

    # -- volumes --------------------------------------------------------------------------------

    def _volume(self, name: str) -> libvirt.virStorageVol:
        lv = self._pool()
        for attempt in (1, 2):
            try:
                return lv.storageVolLookupByName(name)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
                if attempt == 2:
                    raise AgentError("notfound", f"no volume {name!r} in pool {self.config.name!r}") from None
            lv.refresh(0)  # another host of this cluster made it since the last refresh
        raise AssertionError("unreachable")

    def _refuse_existing(self, name: str) -> libvirt.virStoragePool:
        lv = self._pool()
        lv.refresh(0)
        if name in lv.listVolumes():
            raise AgentError("invalid", f"volume {name!r} already exists in pool {self.config.name!r}")
        return lv

    def describe(self, vol: libvirt.virStorageVol) -> wire.Volume:
        return wire.Volume(pool=self.config.name, name=vol.name(), path=f"{self.config.pool}/{vol.name()}",
                           capacity=vol.info()[1], format="raw", kind="rbd")

    def resolve(self, name: str) -> VolumeRef:
        self._volume(name)
        secret = self.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, self.libvirt_name)
        image = f"{self.config.pool}/{name}"
        return VolumeRef(path=image, format="raw", rbd=RbdRef(
            name=image, monitors=self.config.hosts(), user=self.config.user, secret_uuid=secret.UUIDString()))

    def create(self, name: str, size: int) -> wire.Volume:
        lv = self._refuse_existing(name)
        return self.describe(lv.createXML(Volume(name=name, capacity=size, format="raw").to_xml(), 0))

    def import_(self, name: str, source_path: str, info: dict[str, Any]) -> wire.Volume:
        """An image file (raw or qcow2, as qemu-img detected) written into a new image of its virtual size."""
        lv = self._refuse_existing(name)
        vol = lv.createXML(Volume(name=name, capacity=int(info["virtual-size"]), format="raw").to_xml(), 0)
        try:
            with self._key_file() as key:
                _run(["qemu-img", "convert", "-q", "-n", "--target-is-zero", "-f", info["format"],
                      "--object", f"secret,id=cephkey,file={key},format=base64",
                      "--target-image-opts", source_path, self._image_opts(name)])
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)
            raise
        return self.describe(vol)

    def export(self, name: str, path: str) -> wire.Empty:
        self._volume(name)
        with self._key_file() as key:
            _run(["qemu-img", "convert", "-q", "-O", "raw", "--object", f"secret,id=cephkey,file={key},format=base64",
                  "--image-opts", self._image_opts(name), path])
        return wire.Empty()

    def clone(self, source: str, name: str, size: int | None) -> wire.Volume:
        """An RBD clone of a protected snapshot of ``source`` (libvirt makes or reuses the snapshot)."""
        lv = self._refuse_existing(name)
        return self.describe(copy_into(lv, self._volume(source), name, "raw", size))

    def resize(self, name: str, size: int) -> wire.Volume:
        vol = self._volume(name)
        grow(vol, name, size)
        return self.describe(vol)

    def delete(self, name: str) -> wire.Empty:
        """The image and its snapshots; clones made from those snapshots are flattened first, so
        they keep their data and stand alone."""
        vol = self._volume(name)
        try:
            vol.delete(libvirt.VIR_STORAGE_VOL_DELETE_WITH_SNAPSHOTS)
            return wire.Empty()
        except libvirt.libvirtError as err:
            children = self._children(name)
            if not children:
                raise
            log.info("volume %s: flattening its clones %s before deleting it (%s)", name, children, err)
        for child in children:
            self._rbd("flatten", child)
        self._volume(name).delete(libvirt.VIR_STORAGE_VOL_DELETE_WITH_SNAPSHOTS)
        return wire.Empty()

    def _children(self, name: str) -> list[str]:
        image = f"{self.config.pool}/{name}"
        children: list[str] = []
        for snap in json.loads(self._rbd("snap", "ls", "--format", "json", image) or "[]"):
            listed = json.loads(self._rbd("children", "--format", "json", f"{image}@{snap['name']}") or "[]")
            children += [f"{c['pool']}/{c['image']}" for c in listed]
        return children

    def list(self) -> list[wire.Volume]:
        lv = self._pool()
        lv.refresh(0)
        return sorted((self.describe(v) for v in lv.listAllVolumes(0)), key=lambda v: v.name)

    # -- Ceph's own tools, with the key in a private file ---------------------------------------

    @contextlib.contextmanager
    def _key_file(self) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="strato-rbd-") as private:  # mode 0700
            path = os.path.join(private, "key")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(self.config.key())
            yield path

    def _image_opts(self, name: str) -> str:
        """qemu's rbd driver options (commas in values doubled, as qemu's option syntax wants)."""
        def esc(value: object) -> str:
            return str(value).replace(",", ",,")

        opts = ["driver=rbd", f"pool={esc(self.config.pool)}", f"image={esc(name)}", f"user={esc(self.config.user)}",
                "key-secret=cephkey", "conf=/dev/null"]
        for n, (host, port) in enumerate(self.config.hosts()):
            opts.append(f"server.{n}.host={esc(host)}")
            opts.append(f"server.{n}.port={port or 6789}")
        return ",".join(opts)

    def _rbd(self, *args: str) -> str:
        with self._key_file() as key:
            keyring = os.path.join(os.path.dirname(key), "keyring")
            with open(os.open(keyring, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(f"[client.{self.config.user}]\n\tkey = {self.config.key()}\n")
            return _run(["rbd", "--conf", "/dev/null", "--mon-host", ",".join(self.config.monitors),
                         "--id", self.config.user, "--keyring", keyring,
                         "--client-mount-timeout", str(self.config.timeout), *args])


def _run(argv: list[str]) -> str:
    """Run a tool with an argument list (never a shell); failures become `internal` errors."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AgentError("internal", f"{argv[0]} failed: {proc.stderr.strip()}")
    return proc.stdout
