"""Drives on Ceph RBD through a real API node: a real Ceph cluster (tests/ceph/cluster.py), the
shared libvirtd, real QEMU guests.  What each test checks is what a user sees (the API, the
guest's console) and what Ceph itself says (``rbd`` with the test cluster's conf and key).

Two hosts on this machine, both with a directory pool and the Ceph pool ``ceph`` (storage type
``dssd``): ``a-lost`` names a monitor nobody listens on, so it cannot reach Ceph; ``b-ceph``
reaches it.  ``a-lost`` sorts first, so it is the scheduler's pick whenever both qualify.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ceph.cluster import CephCluster
from tests.ceph.fixtures import POOL
from tests.strato_process import ROOT, Api, StratoServer, free_port, qemu_reachable_dir, upload, wait_for

GUEST = ROOT / "build" / "guest" / "strato-guest.img"
MiB = 2**20


@dataclass
class Cloud:
    server: StratoServer
    api: Api
    root: Path
    library: str  # the test guest, a library drive on RBD

    def host_prefix(self, host: str) -> str:
        return f"{self.server.prefix}{host}-"

    def console(self, host: str, server_uuid: str) -> Path:
        return self.root / host / "console" / f"{self.host_prefix(host)}{server_uuid}.log"

    def domains(self, host: str) -> list[str]:
        out = subprocess.run(["virsh", "list", "--all", "--name"], capture_output=True, text=True).stdout
        return [name for name in out.split() if name.startswith(self.host_prefix(host))]

    def volume(self, drive_uuid: str) -> str:
        """The drive's RBD image name (the API does not show it; the database does)."""
        with contextlib.closing(sqlite3.connect(self.server.data_dir / "strato.db")) as con:
            pool, volume = con.execute("SELECT pool, volume FROM drives WHERE uuid = ?", (drive_uuid,)).fetchone()
        assert pool == "ceph", pool
        return volume

    def drive_hosts(self, uuids: list[str]) -> dict[str, str]:
        with contextlib.closing(sqlite3.connect(self.server.data_dir / "strato.db")) as con:
            marks = ",".join("?" * len(uuids))
            return dict(con.execute(f"SELECT uuid, host FROM drives WHERE uuid IN ({marks})", uuids).fetchall())


def agent_command(cloud_root: Path, prefix: str, host: str, monitor: str, keyring: Path, retry: int = 30) -> str:
    base = cloud_root / host
    for sub in ("pool", "console", "s"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rbd = f"name=ceph,pool={POOL},user=strato,keyring={keyring},mon={monitor},timeout=3,retry={retry}"
    return (f"env PYTHONPATH={ROOT} {sys.executable} -m agents.cli --stdio --prefix {prefix}{host}- "
            f"--virt-type qemu --pool default={base / 'pool'} --rbd-pool {rbd} "
            f"--console-log-dir {base / 'console'} --socket-dir {base / 's'}")


@pytest.fixture(scope="module")
def cloud(ceph_cluster: CephCluster) -> Iterator[Cloud]:
    root = qemu_reachable_dir("ceph-api")
    server = StratoServer(root / "data", extra_env={"STRATO_STORAGE_POOLS": json.dumps({"dssd": "ceph",
                                                                                       "zadara": "default"})})
    try:
        lost = f"127.0.0.1:{free_port()}"  # nothing listens there
        for host, monitor in (("a-lost", lost), ("b-ceph", ceph_cluster.monitor)):
            server.cli("hosts", "add", host, "--local", "--agent-command",
                       agent_command(root, server.prefix, host, monitor, ceph_cluster.client_keyring))
        server.cli("users", "create", "rbd@example.com", "--password", "rbd-pw")
        library = server.cli("libdrives", "import", str(GUEST), "--name", "Guest on RBD", "--os", "linux",
                             "--arch", "64", "--media", "disk", "--host", "b-ceph").splitlines()[0]
        server.start()
        wait_for(lambda: sorted(h["name"] for h in json.loads(server.cli("hosts", "list"))
                                if h["state"] == "up") == ["a-lost", "b-ceph"], 90, "both hosts up")
        yield Cloud(server, Api(server.base, ("rbd@example.com", "rbd-pw")), root, library)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def wait_drive(api: Api, uuid: str, status: str = "unmounted", timeout: float = 120) -> dict[str, Any]:
    return wait_for(lambda: (d := api.ok("GET", f"drives/{uuid}/"))["status"] == status and d, timeout,
                    f"drive {uuid} {status}")


def clone_library(cloud: Cloud, name: str) -> str:
    made = cloud.api.ok("POST", f"libdrives/{cloud.library}/action/?do=clone", {"name": name}, 202)
    uuid = made["objects"][0]["uuid"]
    wait_drive(cloud.api, uuid)
    return uuid


def new_server(api: Api, name: str, drives: list[str]) -> str:
    body = {"name": name, "cpu": 1000, "mem": 128 * MiB, "vnc_password": "secret",
            "drives": [{"drive": d, "device": "virtio", "dev_channel": f"0:{n}", "boot_order": n + 1}
                       for n, d in enumerate(drives)]}
    return api.ok("POST", "servers/", body, 201)["objects"][0]["uuid"]


def wait_server(api: Api, uuid: str, status: str, timeout: float = 120) -> None:
    wait_for(lambda: api.ok("GET", f"servers/{uuid}/")["status"] == status, timeout, f"server {uuid} {status}")


def guest_blocks(log: Path, timeout: float = 240) -> list[dict[str, str]]:
    """The block devices the busybox guest reports on its serial console."""
    def report() -> str | None:
        text = log.read_text(errors="replace").replace("\r", "") if log.exists() else ""
        found = re.findall(r"STRATO-REPORT-BEGIN\n(.*?)STRATO-REPORT-END", text, re.S)
        return found[0] if found else None

    text = wait_for(report, timeout, f"the guest's report in {log}", interval=0.5)
    return [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in text.splitlines() if line.startswith("block ")]


@pytest.fixture(scope="module")
def booted(cloud: Cloud, ceph_cluster: CephCluster) -> Iterator[tuple[str, str]]:
    """(server, drive): a server running from an RBD clone of the library image."""
    drive = clone_library(cloud, "boot-disk")
    server = new_server(cloud.api, "on-rbd", [drive])
    cloud.api.ok("POST", f"servers/{server}/action/?do=start", status=202)
    wait_server(cloud.api, server, "running")
    yield server, drive
    cloud.api.post(f"servers/{server}/action/?do=stop")


def test_library_clone_is_an_rbd_clone_and_the_guest_boots_from_it(cloud: Cloud, ceph_cluster: CephCluster,
                                                                   booted: tuple[str, str]) -> None:
    server, drive = booted
    image = cloud.volume(drive)
    parent = ceph_cluster.image_info(POOL, image).get("parent", {})
    assert parent.get("image") == cloud.volume(cloud.library)
    assert parent.get("pool") == POOL and parent.get("snapshot"), parent  # copy-on-write from a snapshot
    assert cloud.domains("b-ceph") == [f"{cloud.host_prefix('b-ceph')}{server}"]
    assert cloud.domains("a-lost") == []  # cannot reach Ceph: never chosen
    xml = subprocess.run(["virsh", "dumpxml", cloud.domains("b-ceph")[0]], capture_output=True, text=True).stdout
    assert f"<source protocol='rbd' name='{POOL}/{image}'" in xml and "<secret type='ceph'" in xml
    blocks = guest_blocks(cloud.console("b-ceph", server))
    size = cloud.api.ok("GET", f"drives/{drive}/")["size"]
    assert [(b["name"], int(b["size"])) for b in blocks] == [("vda", size)]


def test_a_host_that_cannot_reach_ceph_is_not_chosen(cloud: Cloud) -> None:
    api = cloud.api
    # New RBD drives land on the host that reaches Ceph; a directory drive on the first host by name.
    rbd = api.ok("POST", "drives/", {"name": "new-rbd", "size": 64 * MiB, "media": "disk"}, 201)["objects"][0]
    local = api.ok("POST", "drives/", {"name": "new-dir", "size": 64 * MiB, "media": "disk",
                                       "storage_type": "zadara"}, 201)["objects"][0]
    for made in (rbd, local):
        wait_drive(api, made["uuid"])
    assert cloud.drive_hosts([rbd["uuid"], local["uuid"]]) == {rbd["uuid"]: "b-ceph", local["uuid"]: "a-lost"}
    # A server with that RBD drive starts on b-ceph although a-lost is preferred otherwise.
    server = new_server(api, "rbd-placed", [rbd["uuid"]])
    api.ok("POST", f"servers/{server}/action/?do=start", status=202)
    wait_server(api, server, "running")
    assert f"{cloud.host_prefix('b-ceph')}{server}" in cloud.domains("b-ceph")
    assert not any(server in name for name in cloud.domains("a-lost"))
    api.ok("POST", f"servers/{server}/action/?do=stop", status=202)
    wait_server(api, server, "stopped")
    api.ok("DELETE", f"servers/{server}/?recurse=all_drives", status=204)
    api.ok("DELETE", f"drives/{local['uuid']}/", status=204)
    # The operator is told why.
    doctor = subprocess.run([sys.executable, "-m", "orchestrator.cli", "doctor", "--host", "a-lost", "--data-dir",
                             str(cloud.server.data_dir)], cwd=ROOT, env={**os.environ, **cloud.server.env},
                            capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 1 and "rbd pool ceph: its Ceph cluster did not answer" in doctor.stdout, doctor


def test_clone_resize_and_delete_ask_ceph(cloud: Cloud, ceph_cluster: CephCluster, booted: tuple[str, str]) -> None:
    api = cloud.api
    server, drive = booted
    # The running server's drive: a clone is refused while it runs (spec §20.7), then instant once stopped.
    refused = api.post(f"drives/{drive}/action/?do=clone", {"name": "too-early"})
    assert refused.status_code == 403, refused.text
    api.ok("POST", f"servers/{server}/action/?do=stop", status=202)
    wait_server(api, server, "stopped")
    started = time.monotonic()
    copy = api.ok("POST", f"drives/{drive}/action/?do=clone", {"name": "copy"}, 202)["objects"][0]["uuid"]
    wait_drive(api, copy)
    elapsed = time.monotonic() - started
    source, image = cloud.volume(drive), cloud.volume(copy)
    assert ceph_cluster.image_info(POOL, image)["parent"]["image"] == source
    print(f"RBD clone through the API: {elapsed:.2f} s")
    # resize: Ceph's own size follows
    size = api.ok("GET", f"drives/{copy}/")["size"] + 256 * MiB
    api.ok("POST", f"drives/{copy}/action/?do=resize", {"name": "copy", "size": size, "media": "disk"}, 202)
    wait_for(lambda: ceph_cluster.image_info(POOL, image)["size"] == size, 60, "the RBD image resized")
    wait_drive(api, copy)
    assert api.ok("GET", f"drives/{copy}/")["size"] == size
    # delete the clone's parent: the clone is flattened first and keeps its data; then delete the clone
    before = _read(ceph_cluster, image, 4 * MiB)
    api.ok("DELETE", f"servers/{server}/", status=204)
    api.ok("DELETE", f"drives/{drive}/", status=204)
    wait_for(lambda: source not in ceph_cluster.images(POOL), 60, "the source image gone")
    assert "parent" not in ceph_cluster.image_info(POOL, image)
    assert _read(ceph_cluster, image, 4 * MiB) == before
    api.ok("DELETE", f"drives/{copy}/", status=204)
    wait_for(lambda: image not in ceph_cluster.images(POOL), 60, "the clone's image gone")


def _read(cluster: CephCluster, image: str, length: int) -> bytes:
    out = cluster.root / f"read-{image}"
    try:
        cluster.rbd("export", f"{POOL}/{image}", str(out))
        return out.read_bytes()[:length]
    finally:
        out.unlink(missing_ok=True)


def test_upload_and_download_an_rbd_drive(cloud: Cloud, ceph_cluster: CephCluster) -> None:
    data = os.urandom(3 * MiB) + b"STRATO-RBD-UPLOAD"
    uuid = upload(cloud.api, "on-rbd.img", data)
    image = cloud.volume(uuid)
    assert image in ceph_cluster.images(POOL)
    assert _read(ceph_cluster, image, len(data)) == data  # Ceph holds the uploaded bytes
    whole = cloud.api.get(f"drives/{uuid}/download/")
    assert whole.status_code == 200, whole.text
    assert whole.content[:len(data)] == data and not whole.content[len(data):].strip(b"\0")
    assert len(whole.content) == ceph_cluster.image_info(POOL, image)["size"]  # the whole image, as for files
    cloud.api.ok("DELETE", f"drives/{uuid}/", status=204)
    wait_for(lambda: image not in ceph_cluster.images(POOL), 60, "the uploaded image gone")


def test_a_pool_whose_cluster_comes_back_is_used_without_restarting_the_agent(cloud: Cloud,
                                                                               ceph_cluster: CephCluster) -> None:
    server = cloud.server

    def late() -> dict[str, Any]:
        return next(h for h in json.loads(server.cli("hosts", "list")) if h["name"] == "c-late")

    def agent_pids() -> list[str]:  # the API node's agent of c-late (its prefix names it)
        return subprocess.run(["pgrep", "-f", "--", f"--prefix {server.prefix}c-late- "], capture_output=True,
                              text=True).stdout.split()

    try:
        with ceph_cluster.monitor_down():
            server.cli("hosts", "add", "c-late", "--local", "--agent-command", agent_command(
                cloud.root, server.prefix, "c-late", ceph_cluster.monitor, ceph_cluster.client_keyring, retry=2))
            wait_for(lambda: late()["state"] == "up", 90, "c-late up")
            host = late()
            assert (host["pools"], host["unreachable_pools"]) == (["default"], ["ceph"])
            pids = agent_pids()
            assert len(pids) == 1
        # The monitor is back: the agent reaches the pool by itself, and the API node sees it.
        wait_for(lambda: late()["pools"] == ["default", "ceph"], 90, "c-late's ceph pool reached")
        assert late()["unreachable_pools"] == [] and agent_pids() == pids
    finally:
        server.cli("hosts", "remove", "c-late")
