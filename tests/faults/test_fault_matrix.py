"""The fault matrix on real hosts (issue 11): for each fault, the API's answer, the job's end state
(``GET /jobs/``: ``failed`` with a reason its owner can read), the server or drive state once the
host recovered, and that no volume is lost or leaked (the pool's files counted before and after).

Every fault hits only what this package made: its private libvirtd (``conftest.py``), its tmpfs
pool, its own guests' QEMU processes, its own agent processes and sshd sessions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.api.conftest import assert_error
from tests.api.test_faults import Feed
from tests.api.test_upload_hardening import resumable
from tests.faults.conftest import FaultNode, SshNode, reason_is_clean
from tests.strato_process import ROOT, Api, upload, wait_for

GUEST = ROOT / "build" / "guest" / "strato-guest.img"


def jobs_on(api: Api, collection: str, uuid: str, operation: str) -> list[dict[str, Any]]:
    return [j for j in api.ok("GET", "jobs/?limit=0")["objects"]
            if j["operation"] == operation and f"/{collection}/{uuid}/" in "".join(j["resources"])]


def ended(api: Api, collection: str, uuid: str, operation: str, known: set[str] = frozenset(),
          timeout: float = 120) -> dict[str, Any]:
    """The job of this operation on the object that ended, other than the ``known`` ones."""
    return wait_for(lambda: [j for j in jobs_on(api, collection, uuid, operation)
                             if j["state"] != "started" and j["uuid"] not in known], timeout,
                    f"the {operation} job on {uuid} to end")[0]


def status(api: Api, collection: str, uuid: str) -> str:
    return api.ok("GET", f"{collection}/{uuid}/")["status"]


def wait_status(api: Api, collection: str, uuid: str, wanted: str, timeout: float = 120) -> None:
    wait_for(lambda: status(api, collection, uuid) == wanted, timeout, f"{collection} {uuid} {wanted}")


def guest_server(api: Api, drive: str, name: str) -> str:
    body = {"name": name, "cpu": 1000, "mem": 64 * 2**20, "vnc_password": "secret",
            "drives": [{"drive": drive, "device": "virtio", "dev_channel": "0:0", "boot_order": 1}]}
    return api.ok("POST", "servers/", body, 201)["objects"][0]["uuid"]


def start_and_check(api: Api, server: str) -> None:
    """The server starts (its start job a success), then stops again."""
    known = {j["uuid"] for j in jobs_on(api, "servers", server, "server_start")}
    assert api.post(f"servers/{server}/action/?do=start").status_code == 202
    job = ended(api, "servers", server, "server_start", known)
    assert job["state"] == "success", job
    wait_status(api, "servers", server, "running")
    assert api.post(f"servers/{server}/action/?do=stop").status_code == 202
    wait_status(api, "servers", server, "stopped")


def random_image(size: int) -> bytes:
    return os.urandom(size)


# --- (d) QEMU killed under a running guest ---------------------------------------------------------


def test_qemu_killed_under_a_running_guest(fault_node: FaultNode) -> None:
    node, api = fault_node, fault_node.api
    drive = upload(api, "guest.img", GUEST.read_bytes())
    server = guest_server(api, drive, "crashes")
    files = node.pool_files()
    assert api.post(f"servers/{server}/action/?do=start").status_code == 202
    wait_status(api, "servers", server, "running")
    feed = Feed(api)
    try:
        os.kill(node.qemu_pid(server), signal.SIGKILL)  # this guest's own QEMU, nothing else
        wait_status(api, "servers", server, "stopped", 60)
        fault = ended(api, "servers", server, "server_fault", timeout=30)
        assert fault["state"] == "failed", fault
        assert "stopped unexpectedly" in fault["data"]["error"], fault
        reason_is_clean(fault["data"]["error"], node.server.data_dir)
        shown = api.ok("GET", f"servers/{server}/")
        assert shown["runtime"] is None and fault["uuid"] in [j["uuid"] for j in shown["jobs"]], shown
        wait_for(lambda: fault["resource_uri"] in [f["resource_uri"] for f in feed.frames], 30, "the fault on the feed")
        assert f"/api/2.0/servers/{server}/" in [f["resource_uri"] for f in feed.frames]
    finally:
        feed.close()
    assert status(api, "drives", drive) == "mounted"  # attached, as before the start
    assert node.pool_files() == files

    # The same while no agent listens (killed just before): the host's reconnection finds it stopped.
    assert api.post(f"servers/{server}/action/?do=start").status_code == 202
    wait_status(api, "servers", server, "running")
    [agent] = node.agent_pids()
    os.kill(agent, signal.SIGKILL)
    os.kill(node.qemu_pid(server), signal.SIGKILL)
    node.wait_host("up", 90)
    wait_status(api, "servers", server, "stopped", 60)
    later = ended(api, "servers", server, "server_fault", {fault["uuid"]}, timeout=30)
    # Found stopped by the reconnection, or told by libvirtd's own late event to the new agent: both
    # are the fault, recorded once.
    assert later["state"] == "failed" and "stopped unexpectedly" in later["data"]["error"], later
    assert node.pool_files() == files
    start_and_check(api, server)  # recovered: it starts again
    api.ok("DELETE", f"servers/{server}/?recurse=all_drives", status=204)
    wait_for(lambda: len(node.pool_files()) == len(files) - 1, 30, "the drive's volume deleted")


# --- (a) libvirtd stopped mid-start --------------------------------------------------------------


def test_libvirtd_stopped_mid_start(fault_node: FaultNode) -> None:
    """libvirtd hangs while the agent asks it to start a guest, then dies: the start fails with a
    reason, the host goes down and comes back by itself once libvirtd runs again, and the server
    starts then."""
    node, api = fault_node, fault_node.api
    drive = upload(api, "guest-a.img", GUEST.read_bytes())
    server = guest_server(api, drive, "mid-start")
    files = node.pool_files()
    node.libvirtd.signal(signal.SIGSTOP)  # the agent's next libvirt call waits on it...
    try:
        r = api.post(f"servers/{server}/action/?do=start")
        assert r.status_code == 202, r.text
        time.sleep(3)  # ...the start is in flight in the agent
        node.libvirtd.kill()  # ...and libvirtd dies under it
    finally:
        if node.libvirtd.proc is not None and node.libvirtd.proc.poll() is None:
            node.libvirtd.signal(signal.SIGCONT)
    job = ended(api, "servers", server, "server_start", timeout=90)
    assert job["state"] == "failed", job
    reason_is_clean(job["data"]["error"], node.server.data_dir)
    wait_status(api, "servers", server, "stopped", 60)
    assert api.ok("GET", f"servers/{server}/")["runtime"] is None
    node.wait_host("down", 60)
    # While libvirtd is gone a start is refused at once (no host to run it), never accepted silently.
    r = api.post(f"servers/{server}/action/?do=start")
    assert r.status_code >= 400 and r.status_code != 500, r.text
    node.libvirtd.start()
    node.wait_host("up", 120)
    assert node.pool_files() == files
    assert status(api, "drives", drive) == "mounted"
    start_and_check(api, server)
    api.ok("DELETE", f"servers/{server}/?recurse=all_drives", status=204)
    wait_for(lambda: len(node.pool_files()) == len(files) - 1, 30, "the drive's volume deleted")


# --- (e) agent killed mid-clone ------------------------------------------------------------------


def test_agent_killed_mid_clone(fault_node: FaultNode) -> None:
    """The agent dies while libvirtd copies a volume for it: the clone job fails (or, had the copy
    answered first, succeeds), and once the next agent is up no half copy is left in the pool."""
    node, api = fault_node, fault_node.api
    source = upload(api, "to-copy.img", random_image(48 * 2**20))
    files = node.pool_files()
    copy = api.ok("POST", f"drives/{source}/action/?do=clone", {"name": "copy"}, 202)["objects"][0]["uuid"]
    wait_for(lambda: f"{copy}.qcow2" in os.listdir(node.pool), 60, "the copy begun", interval=0.005)
    agents = node.agent_pids()
    assert len(agents) == 1, agents
    os.kill(agents[0], signal.SIGKILL)
    job = ended(api, "drives", copy, "drive_clone", timeout=90)
    reason = job["data"].get("error", "")
    node.wait_host("up", 90)
    if job["state"] == "failed":  # the kill came first: the copy is rolled back
        reason_is_clean(reason, node.server.data_dir)
        assert api.get(f"drives/{copy}/").status_code == 404
        wait_for(lambda: node.pool_files() == files, 60, f"no half copy left: {node.pool_files()} vs {files}")
    else:
        assert status(api, "drives", copy) == "unmounted"
        assert node.pool_files() == sorted([*files, f"{copy}.qcow2"])
    assert status(api, "drives", source) == "unmounted"
    again = api.ok("POST", f"drives/{source}/action/?do=clone", {"name": "again"}, 202)["objects"][0]["uuid"]
    assert ended(api, "drives", again, "drive_clone")["state"] == "success"
    for uuid in {source, again, copy}:
        api.delete(f"drives/{uuid}/")
    wait_for(lambda: len(node.pool_files()) == len(files) - 1, 30, "the drives' volumes deleted")
    assert job["state"] == "failed", f"the copy finished before the agent was killed: {job}"


# --- (b) pool directory removed ------------------------------------------------------------------


def test_pool_directory_removed(fault_node: FaultNode) -> None:
    """The pool's directory disappears (an unmounted share, an operator's mistake): creates, clones
    and starts fail with a reason and leave nothing behind; once the directory is back, all works
    and every volume is still there."""
    node, api = fault_node, fault_node.api
    drive = upload(api, "guest-b.img", GUEST.read_bytes())
    server = guest_server(api, drive, "no-pool")
    files = node.pool_files()
    away = node.pool.with_name("pool.away")
    node.pool.rename(away)
    try:
        created = api.ok("POST", "drives/", {"name": "new", "size": 16 * 2**20, "media": "disk"}, 201)["objects"][0]
        job = ended(api, "drives", created["uuid"], "drive_create", timeout=60)
        assert job["state"] == "failed", job
        reason_is_clean(job["data"]["error"], node.server.data_dir)
        assert api.get(f"drives/{created['uuid']}/").status_code == 404
        copy = api.ok("POST", f"drives/{drive}/action/?do=clone", {"name": "c"}, 202)["objects"][0]["uuid"]
        job = ended(api, "drives", copy, "drive_clone", timeout=60)
        assert job["state"] == "failed", job
        reason_is_clean(job["data"]["error"], node.server.data_dir)
        assert api.get(f"drives/{copy}/").status_code == 404
        assert api.post(f"servers/{server}/action/?do=start").status_code == 202
        job = ended(api, "servers", server, "server_start", timeout=60)
        assert job["state"] == "failed", job
        reason_is_clean(job["data"]["error"], node.server.data_dir)
        wait_status(api, "servers", server, "stopped", 60)
    finally:
        if node.pool.exists():  # made again meanwhile: empty, or the test's failure says what it holds
            node.pool.rmdir()
        away.rename(node.pool)
    assert node.pool_files() == files
    assert status(api, "drives", drive) == "mounted"
    start_and_check(api, server)
    copy = api.ok("POST", f"drives/{drive}/action/?do=clone", {"name": "c"}, 202)["objects"][0]["uuid"]
    assert ended(api, "drives", copy, "drive_clone")["state"] == "success"
    api.ok("DELETE", f"servers/{server}/?recurse=all_drives", status=204)
    api.ok("DELETE", f"drives/{copy}/", status=204)
    wait_for(lambda: len(node.pool_files()) == len(files) - 1, 30, "the drives' volumes deleted")


# --- (c) disk full -------------------------------------------------------------------------------


def free_space(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A file taking all the free space of ``path``'s file system but ``leave`` bytes."""
    filler = path / "filler"
    subprocess.run(["fallocate", "-l", str(free_space(path) - leave), str(filler)], check=True)
    return filler


def refused(api: Api, body: dict[str, Any]) -> tuple[Any] | None:
    """The answer to a drive create that was refused; a drive made (the host's space not seen yet) goes."""
    r = api.post("drives/", body)
    if r.status_code == 201:
        uuid = r.json()["objects"][0]["uuid"]
        wait_for(lambda: status(api, "drives", uuid) != "creating", 30, "created")
        api.delete(f"drives/{uuid}/")
        return None
    return (r,)


def placed(api: Api, body: dict[str, Any]) -> str | None:
    r = api.post("initupload/", body)
    return r.json()["objects"][0]["uuid"] if r.status_code == 201 else None


def test_disk_full(fault_node: FaultNode) -> None:
    """A full pool: a new drive is refused at once (503, nothing made); an upload placed while there
    was room and imported once the pool filled up fails with the host's reason and leaves no partial
    file; with room again uploads work."""
    node, api = fault_node, fault_node.api
    mount, files = node.pool.parent, node.pool_files()
    drives = {d["uuid"] for d in api.ok("GET", "drives/?limit=0")["objects"]}
    filler = fill(mount, 2 * 2**20)
    try:
        r = wait_for(lambda: refused(api, {"name": "big", "size": 16 * 2**20, "media": "disk"}), 30,
                     "the full pool seen", interval=1)[0]
        # Refused by the host's free space as its agent last reported it (403 on `size`, checked in
        # the write's transaction), or by the agent itself when that report is older than the filling
        # (503): nothing made either way.
        if r.status_code == 403:
            assert_error(r, 403, "size", "permission")
            assert "Not enough storage" in r.json()[0]["error_message"], r.text
        else:
            assert_error(r, 503, None, "backend")
            assert "enough resources" in r.json()[0]["error_message"], r.text
        assert {d["uuid"] for d in api.ok("GET", "drives/?limit=0")["objects"]} == drives
        filler.unlink()
        image = random_image(24 * 2**20)
        drive = wait_for(lambda: placed(api, {"name": "fills", "size": len(image), "media": "disk"}), 30,
                         "room seen again", interval=1)
        filler = fill(mount, 8 * 2**20)  # the pool fills up while the image arrives
        chunk = 8 * 2**20
        for number in range(len(image) // chunk):
            r = resumable(api, drive, number + 1, image[number * chunk:(number + 1) * chunk], chunk)
            assert r.status_code in (200, 201), r.text
        job = ended(api, "drives", drive, "drive_upload", timeout=60)
        assert job["state"] == "failed" and "No space left on device" in job["data"]["error"], job
        reason_is_clean(job["data"]["error"], node.server.data_dir)
        assert api.get(f"drives/{drive}/").status_code == 404
        assert node.pool_files() == files  # no partial import left
    finally:
        filler.unlink(missing_ok=True)
    image = random_image(24 * 2**20)
    raw = {"Content-Type": "application/octet-stream"}
    again = wait_for(lambda: (r := api.post("drives/upload/fits.img/", raw=image, headers=raw)).status_code == 201
                     and r.text.strip(), 30, "room seen", interval=1)
    assert status(api, "drives", again) == "unmounted"
    assert node.pool_files() == sorted([*files, f"{again}.qcow2"])
    api.ok("DELETE", f"drives/{again}/", status=204)
    wait_for(lambda: node.pool_files() == files, 30, "the volume deleted")


# --- (f) the SSH connection of a remote host cut mid-operation -------------------------------------


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def test_ssh_connection_cut_mid_clone(ssh_node: SshNode) -> None:
    """The sshd session carrying a remote host's agent dies while that agent copies a volume: the
    clone fails saying the connection was lost, the API node reconnects by itself, and the copy the
    host finished meanwhile is deleted (nothing leaked, nothing lost)."""
    node, api = ssh_node, ssh_node.api
    source = upload(api, "remote.img", random_image(48 * 2**20))
    files = node.pool_files()
    copy = api.ok("POST", f"drives/{source}/action/?do=clone", {"name": "copy"}, 202)["objects"][0]["uuid"]
    wait_for(lambda: f"{copy}.qcow2" in os.listdir(node.pool), 60, "the copy begun", interval=0.005)
    assert node.sshd.proc is not None
    sessions = children_of(node.sshd.proc.pid)  # this test's sshd's sessions, nothing else
    assert sessions
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
    job = ended(api, "drives", copy, "drive_clone", timeout=90)
    assert job["state"] == "failed", f"the copy finished before the connection was cut: {job}"
    assert "connection to the host was lost" in job["data"]["error"], job
    reason_is_clean(job["data"]["error"], node.server.data_dir)
    assert api.get(f"drives/{copy}/").status_code == 404
    wait_for(lambda: node.host_state() == "up", 90, "the host reconnected")
    wait_for(lambda: node.pool_files() == files, 60, f"no copy left: {node.pool_files()} vs {files}")
    assert status(api, "drives", source) == "unmounted"
    again = api.ok("POST", f"drives/{source}/action/?do=clone", {"name": "again"}, 202)["objects"][0]["uuid"]
    assert ended(api, "drives", again, "drive_clone")["state"] == "success"
    api.ok("DELETE", f"drives/{again}/", status=204)
    api.ok("DELETE", f"drives/{source}/", status=204)
    wait_for(lambda: len(node.pool_files()) == len(files) - 1, 30, "the drives' volumes deleted")
