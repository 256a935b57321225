"""Copy-on-write clones in a directory pool (issue 11, "clones never block"), on a real node.

A clone is a qcow2 overlay on the source's image as it was (a read-only base that the source
reads through too), so it is ``unmounted`` in the clone call's answer and boots at once; both
sides are flattened in the background (``flatten_rate`` slows that down here so the tests can
act while it runs). What a user sees is checked: API answers, the guest's serial console, the
bytes a download returns; the pool directory and the live domain XML show bases and chains.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.strato_process import ROOT, Api, StratoServer, serial_log, upload, wait_for

pytestmark = pytest.mark.libvirt

GUEST = ROOT / "build" / "guest" / "strato-guest.img"
MiB = 2**20
RATE = 6 * MiB  # bytes/s of flattening: a second or more for the drives below


@dataclass
class Node:
    server: StratoServer
    api: Api

    @property
    def pool(self) -> Path:
        return self.server.data_dir / "pools" / "local"

    def volume(self, drive: str) -> Path:
        return self.pool / f"{drive}.qcow2"

    def backing(self, drive: str) -> str | None:
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(self.volume(drive))],
                              capture_output=True, text=True, check=True).stdout
        return json.loads(info).get("backing-filename")

    def bases(self) -> list[str]:
        return sorted(p.name for p in self.pool.iterdir() if p.name.startswith("base-"))

    def flattening(self, drive: str) -> bool:
        return (self.pool / f".{drive}.qcow2.flat").exists()

    def clone(self, drive: str, name: str, library: bool = False) -> dict:
        collection = "libdrives" if library else "drives"
        return self.api.ok("POST", f"{collection}/{drive}/action/?do=clone", {"name": name}, 202)["objects"][0]

    def download(self, drive: str) -> bytes:
        r = self.api.get(f"drives/{drive}/download/")
        assert r.status_code == 200, r.text
        return r.content

    def flattened(self, *drives: str) -> bool:
        return all(self.backing(d) is None for d in drives)


def qemu_processes(path: Path) -> list[int]:
    """Processes (ours: the agent's qemu-img) whose command line names this file."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(path).encode() in cmdline:
            found.append(int(pid))
    return found


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    if not GUEST.exists():
        pytest.skip("build the test guest first: tests/guest/build-image.sh")
    root = Path(tempfile.mkdtemp(prefix="strato-cow-", dir="/var/tmp"))
    root.chmod(0o755)
    server = StratoServer(root / "data", extra_env={"STRATO_FLATTEN_RATE": str(RATE)})
    try:
        server.data_dir.mkdir()
        server.data_dir.chmod(0o755)
        api = server.add_user("cow@example.com", "cow-pw")
        server.start()
        server.wait_host_up()
        yield Node(server, api)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def marker_disk(text: str, size: int = 8 * MiB) -> bytes:
    """What the test guest reports as a disk's marker, then data that is not all zeros."""
    head = f"STRATO-MARKER:{text}\n".encode()
    return head + os.urandom(size - len(head))


def test_a_library_clone_boots_at_once_and_keeps_what_its_deleted_source_had(node: Node) -> None:
    api = node.api
    library = node.server.cli("libdrives", "import", str(GUEST), "--name", "cow guest", "--os", "linux",
                              "--arch", "64", "--media", "disk").strip().splitlines()[-1]
    data = marker_disk("before")
    source = upload(api, "marked.img", data)
    boot = node.clone(library, "boot-disk", library=True)
    marked = node.clone(source, "marked-clone")
    assert boot["status"] == "unmounted" and marked["status"] == "unmounted"  # usable in the answer
    assert api.ok("GET", f"drives/{source}/")["status"] == "unmounted"  # the source is free too
    jobs = {j["operation"]: j["state"] for j in api.ok("GET", "jobs/")["objects"]}
    assert jobs["drive_clone"] == "success"

    # The source is written after the clone (its own volume, which the test made): the clone
    # keeps the source's data as it was.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 64k", str(node.volume(source))],
                   check=True, capture_output=True)
    assert node.download(source)[:4] == b"AAAA"
    assert node.download(marked["uuid"])[:len(data)] == data
    assert api.delete(f"drives/{source}/").status_code == 204

    body = {"name": "cow-guest", "cpu": 1000, "mem": 128 * MiB, "vnc_password": "secret-pw",
            "drives": [{"drive": boot["uuid"], "device": "virtio", "dev_channel": "0:0", "boot_order": 1},
                       {"drive": marked["uuid"], "device": "virtio", "dev_channel": "0:1"}]}
    server = api.ok("POST", "servers/", {"objects": [body]}, 201)["objects"][0]["uuid"]
    domain = f"{node.server.prefix}{server}"
    try:
        r = api.post(f"servers/{server}/action/?do=start")
        assert r.status_code == 202, r.text
        log = wait_for(lambda: "STRATO-READY" in serial_log(domain) and serial_log(domain), 180, "the guest's report")
        assert "marker=before" in log, log  # the clone's disk, read by the guest, as the source was
        # Flattened while the guest runs (libvirt's block pull): no backing left in the live XML,
        # no base left in the pool, and the guest still answers.
        wait_for(lambda: node.flattened(boot["uuid"], marked["uuid"]), 120, "the clones flattened")
        xml = subprocess.run(["virsh", "dumpxml", domain], capture_output=True, text=True, check=True).stdout
        assert "<backingStore type" not in xml, xml
        wait_for(lambda: node.bases() == [], 60, "the bases deleted")
        assert api.ok("GET", f"servers/{server}/")["status"] == "running"
        r = api.post(f"servers/{server}/action/?do=stop")
        assert r.status_code == 202, r.text
        wait_for(lambda: api.ok("GET", f"servers/{server}/")["status"] == "stopped", 60, "stopped")
        assert node.download(marked["uuid"])[:len(data)] == data  # flattened: the same bytes
    finally:
        api.delete(f"servers/{server}/?recurse=all_drives")


def test_a_clone_deleted_while_it_is_flattened(node: Node) -> None:
    data = marker_disk("source")
    source = upload(node.api, "flat-source.img", data)
    before = sorted(p.name for p in node.pool.iterdir())
    clone = node.clone(source, "short-lived")["uuid"]
    wait_for(lambda: node.flattening(clone), 30, "the clone's flatten running", 0.05)
    assert node.api.delete(f"drives/{clone}/").status_code == 204
    wait_for(lambda: not node.volume(clone).exists() and not node.flattening(clone), 30, "the clone's files gone")
    assert qemu_processes(node.volume(clone)) == []  # its flatten was stopped, not left running
    assert node.download(source)[:len(data)] == data  # the source reads through the base still
    wait_for(lambda: node.flattened(source) and node.bases() == [], 60, "the source flattened, the base gone")
    assert sorted(p.name for p in node.pool.iterdir()) == before
    assert node.download(source)[:len(data)] == data


def test_a_restart_of_the_node_while_flattening(node: Node) -> None:
    data = marker_disk("restart")
    source = upload(node.api, "restart-source.img", data)
    clone = node.clone(source, "survivor")["uuid"]
    wait_for(lambda: node.flattening(clone), 30, "the clone's flatten running", 0.05)
    node.server.proc.terminate()  # the API node and its agent (and the agent's qemu-img) stop
    node.server.proc.wait(30)
    wait_for(lambda: qemu_processes(node.volume(clone)) == [], 10, "the flatten's qemu-img gone")
    assert node.backing(clone) is not None  # interrupted: still an overlay
    node.server.start()
    node.server.wait_host_up()
    wait_for(lambda: node.flattened(source, clone) and node.bases() == [], 120, "both flattened after the restart")
    assert not node.flattening(clone)
    assert node.download(clone)[:len(data)] == data == node.download(source)[:len(data)]
    for drive in (source, clone):
        assert node.api.delete(f"drives/{drive}/").status_code == 204


def test_an_overlay_resizes_and_downloads(node: Node) -> None:
    data = marker_disk("grow")
    source = upload(node.api, "grow-source.img", data)
    clone = node.clone(source, "grown")["uuid"]
    assert node.backing(clone) is not None
    grandchild = node.clone(clone, "clone-of-a-clone")["uuid"]  # a chain of two bases
    assert node.backing(grandchild) is not None and len(node.bases()) == 2
    r = node.api.post(f"drives/{clone}/action/?do=resize", {"size": 16 * MiB})
    assert r.status_code == 202, r.text
    wait_for(lambda: node.api.ok("GET", f"drives/{clone}/")["status"] == "unmounted", 60, "the resize done")
    assert node.api.ok("GET", f"drives/{clone}/")["size"] == 16 * MiB
    image = node.download(clone)
    assert len(image) == 16 * MiB and image[:len(data)] == data and image[len(data):] == bytes(16 * MiB - len(data))
    wait_for(lambda: node.flattened(source, clone, grandchild) and node.bases() == [], 90, "flattened")
    assert node.download(clone) == image
    assert node.download(grandchild) == data and node.download(source) == data
    for drive in (source, clone, grandchild):
        assert node.api.delete(f"drives/{drive}/").status_code == 204
