"""A real one-machine Ceph cluster for tests and benchmarks, started from Debian's packages
without systemd, in its own directory, and torn down afterwards.

One monitor on 127.0.0.1 (msgr v2 and v1 on free ports: QEMU and libvirt name monitors by
``host:port``, which Ceph reads as v1 unless the port is 3300), one manager (pool capacity, ``ceph
df``), one bluestore OSD on a sparse file, pools of size 1, cephx on, a ``client.<user>`` key
for Strato.  Every command gets ``--cluster``/``-c`` of this cluster: ``/etc/ceph`` is never read.
``paxos propose interval = 0.1`` makes the cluster usable seconds after an empty directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.strato_process import free_port, qemu_reachable_dir

OSD_SIZE = 10 * 2**30  # sparse: blocks are allocated as data lands


@dataclass
class CephCluster:
    root: Path
    name: str = field(default_factory=lambda: f"st{secrets.token_hex(3)}")
    fsid: str = field(default_factory=lambda: str(uuid.uuid4()))
    v2_port: int = field(default_factory=free_port)
    v1_port: int = field(default_factory=free_port)
    user: str = "strato"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- where things are --------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        return self.root / f"{self.name}.conf"

    @property
    def admin_keyring(self) -> Path:
        return self.root / "admin.keyring"

    @property
    def client_keyring(self) -> Path:
        """The keyring of ``client.<user>`` (what an operator hands Strato)."""
        return self.root / f"client.{self.user}.keyring"

    @property
    def monitor(self) -> str:
        """The monitor as libvirt and QEMU name it (host:port, msgr v1)."""
        return f"127.0.0.1:{self.v1_port}"

    @property
    def key(self) -> str:
        return self.cli("auth", "get-key", f"client.{self.user}").strip()

    # -- commands ----------------------------------------------------------------------------

    def _args(self) -> list[str]:
        return ["--cluster", self.name, "-c", str(self.conf)]

    def cli(self, *args: str, timeout: float = 60) -> str:
        """``ceph …`` as the admin of this cluster; its standard output."""
        return _run(["ceph", *self._args(), "--keyring", str(self.admin_keyring), *args], timeout)

    def rbd(self, *args: str, timeout: float = 120) -> str:
        """``rbd …`` as the admin of this cluster; its standard output."""
        return _run(["rbd", *self._args(), "--keyring", str(self.admin_keyring), *args], timeout)

    def images(self, pool: str) -> list[str]:
        return sorted(json.loads(self.rbd("ls", "--format", "json", pool) or "[]"))

    def image_info(self, pool: str, image: str) -> dict[str, Any]:
        return json.loads(self.rbd("info", "--format", "json", f"{pool}/{image}"))

    def create_pool(self, pool: str, pgs: int = 8) -> None:
        self.cli("osd", "pool", "create", pool, str(pgs), str(pgs))
        self.cli("osd", "pool", "set", pool, "size", "1", "--yes-i-really-mean-it")
        self.cli("osd", "pool", "application", "enable", pool, "rbd")
        self.rbd("pool", "init", pool)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("mon", "osd", "mgr", "run", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        self._write_conf()
        self._make_keys()
        self._start_mon()
        self._start_mgr()
        self._start_osd()
        self._wait_healthy(timeout)
        self.cli("osd", "pool", "create", "bootstrap-probe", "1", "1")  # proves the OSD takes writes
        self.cli("osd", "pool", "rm", "bootstrap-probe", "bootstrap-probe", "--yes-i-really-really-mean-it")

    def _write_conf(self) -> None:
        r = self.root
        self.conf.write_text(f"""[global]
fsid = {self.fsid}
mon host = [v2:127.0.0.1:{self.v2_port},v1:127.0.0.1:{self.v1_port}]
mon initial members = a
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
paxos propose interval = 0.1
run dir = {r}/run
log file = {r}/log/$name.log
admin socket = {r}/run/$name.asok
pid file = {r}/run/$name.pid
keyring = {r}/$name.keyring
ms bind ipv4 = true
ms bind ipv6 = false
public addr = 127.0.0.1
[mon]
mon data = {r}/mon/$name
[mgr]
mgr data = {r}/mgr/$name
mgr initial modules =
[osd]
osd data = {r}/osd/$name
osd objectstore = bluestore
bluestore block create = true
bluestore block path = {r}/osd/block
bluestore block size = {OSD_SIZE}
bluestore block db create = false
bluestore block wal create = false
osd memory target = 536870912
bluestore cache autotune = false
bluestore cache size = 67108864
""")

    def _make_keys(self) -> None:
        r, tool = self.root, "ceph-authtool"
        _run([tool, "--create-keyring", str(r / "mon.keyring"), "--gen-key", "-n", "mon.", "--cap", "mon",
              "allow *"])
        _run([tool, "--create-keyring", str(self.admin_keyring), "--gen-key", "-n", "client.admin",
              "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"])
        _run([tool, str(r / "mon.keyring"), "--import-keyring", str(self.admin_keyring)])

    def _daemon(self, argv: list[str], log_name: str) -> None:
        log = open(self.root / "log" / f"{log_name}.out", "wb")  # noqa: SIM115 (kept by the child)
        proc = subprocess.Popen([*argv, *self._args(), "-f"], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.processes.append(proc)

    def _start_mon(self) -> None:
        r = self.root
        monmap = r / "monmap"
        _run(["monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
              f"[v2:127.0.0.1:{self.v2_port},v1:127.0.0.1:{self.v1_port}]", str(monmap)])
        _run(["ceph-mon", *self._args(), "--mkfs", "-i", "a", "--monmap", str(monmap),
              "--keyring", str(r / "mon.keyring")])
        self._daemon(["ceph-mon", "-i", "a"], "mon.a")

    def _start_mgr(self) -> None:
        keyring = self.root / "mgr" / "keyring"
        (self.root / "mgr" / f"{self.name}-x").mkdir(exist_ok=True)
        self._write_key(keyring, "mgr.x", self.cli("auth", "get-or-create", "mgr.x", "mon", "allow profile mgr",
                                                   "osd", "allow *", "mds", "allow *"))
        self._daemon(["ceph-mgr", "-i", "x", "--keyring", str(keyring)], "mgr.x")

    def _start_osd(self) -> None:
        r = self.root
        osd_uuid = str(uuid.uuid4())  # mkfs must write the uuid `osd new` registered, or its boot is ignored
        osd_id = self.cli("osd", "new", osd_uuid).strip()
        data = r / "osd" / f"{self.name}-{osd_id}"
        data.mkdir(exist_ok=True)
        keyring = data / "keyring"
        self._write_key(keyring, f"osd.{osd_id}", self.cli("auth", "get-or-create", f"osd.{osd_id}", "mon",
                                                           "allow profile osd", "mgr", "allow profile osd", "osd",
                                                           "allow *"))
        _run(["ceph-osd", *self._args(), "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid, "--keyring", str(keyring),
              "--osd-data", str(data)], timeout=120)
        self._daemon(["ceph-osd", "-i", osd_id, "--osd-data", str(data), "--keyring", str(keyring)],
                     f"osd.{osd_id}")

    def _write_key(self, path: Path, name: str, text: str) -> None:
        # `auth get-or-create` prints the keyring section itself
        path.write_text(text if text.strip().startswith("[") else f"[{name}]\n\tkey = {text.strip()}\n")
        path.chmod(0o600)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Ceph daemon exited ({proc.args}): see {self.root / 'log'}")
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                status = json.loads(self.cli("status", "--format", "json", timeout=10))
                osds = status.get("osdmap", {})
                osds = osds.get("osdmap", osds)  # nested in older releases
                if osds.get("num_up_osds") == 1 and status.get("mgrmap", {}).get("available"):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"Ceph not ready in {timeout} s: {status}")

    @contextlib.contextmanager
    def monitor_down(self) -> Iterator[None]:
        """The monitor stopped for the block (no client reaches the cluster), then started again from
        its store, and the cluster healthy once more."""
        mon = next(p for p in self.processes if p.args[0] == "ceph-mon")
        os.killpg(mon.pid, signal.SIGTERM)
        mon.wait(timeout=10)
        self.processes.remove(mon)
        try:
            yield
        finally:
            self._daemon(["ceph-mon", "-i", "a"], "mon.a")
            self._wait_healthy(120)

    def make_client(self, pools: list[str]) -> None:
        """``client.<user>`` with the rbd profile on ``pools``, written to :attr:`client_keyring`."""
        caps = ",".join(f"profile rbd pool={p}" for p in pools)
        self._write_key(self.client_keyring, f"client.{self.user}", self.cli(
            "auth", "get-or-create", f"client.{self.user}", "mon", "profile rbd", "osd", caps, "mgr",
            "profile rbd"))

    def stop(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=3)  # a throwaway cluster: no clean shutdown worth waiting for
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.processes.clear()


@contextlib.contextmanager
def running_cluster(pools: tuple[str, ...] = ("strato",)) -> Iterator[CephCluster]:
    """A started cluster with ``pools`` and a client key for them; everything removed afterwards."""
    root = qemu_reachable_dir("ceph")
    cluster = CephCluster(root)
    try:
        cluster.start()
        for pool in pools:
            cluster.create_pool(pool)
        cluster.make_client(list(pools))
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _run(argv: list[str], timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc.stdout
