"""Failures are first-class (issue 11, defect 1): an operation that fails on the host after the API
answered leaves a ``failed`` job saying why, through the API and the ``/websocket`` feed, and the
resource is back in a consistent state; ``strato serve`` refuses a data directory QEMU cannot reach.

The case is the issue's: a data directory QEMU's user (libvirt-qemu) cannot traverse.  ``strato
serve`` now refuses to start on one, so the directory is closed after it started (an operator's
``chmod``, a restored backup) and the start fails on the host with "Permission denied".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.api.conftest import attach, make_drive, make_server, wait_idle
from tests.strato_process import ROOT, Api, StratoServer, qemu_reachable_dir, wait_for


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[StratoServer, Api]]:
    root = qemu_reachable_dir("faults")
    server = StratoServer(root / "data", extra_env={"STRATO_AGENT_PREFIX": f"stflt{os.getpid()}-"})
    try:
        api = Api(server.base, ("faults@example.com", "faults-pw"))
        server.cli("users", "create", "faults@example.com", "--password", "faults-pw")
        server.start()
        server.wait_host_up()
        yield server, api
    finally:
        (root / "data").chmod(0o755)
        server.stop()
        subprocess.run(["virsh", "-q", "pool-destroy", f"stflt{os.getpid()}-default"], capture_output=True)
        subprocess.run(["virsh", "-q", "pool-undefine", f"stflt{os.getpid()}-default"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


class Feed:
    """The caller's ``/websocket`` frames, collected in a thread."""

    def __init__(self, api: Api) -> None:
        r = api.post("accounts/action/?do=authenticate_asynchronous", {})
        assert r.status_code == 200, r.text
        url = api.base.replace("http://", "ws://") + "/websocket"
        self.ws = websocket.create_connection(url, cookie=f"async_auth={r.cookies['async_auth']}", timeout=60)
        self.frames: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                self.frames.append(json.loads(self.ws.recv()))
        except (websocket.WebSocketException, OSError, ValueError):
            return

    def close(self) -> None:
        self.ws.close()


def start_jobs(api: Api, server: str) -> list[dict[str, Any]]:
    return [j for j in api.ok("GET", "jobs/?limit=0")["objects"]
            if j["operation"] == "server_start" and f"/servers/{server}/" in "".join(j["resources"])]


def test_failed_start_leaves_a_failed_job_with_the_reason(node: tuple[StratoServer, Api]) -> None:
    strato, api = node
    drive = make_drive(api)["uuid"]
    wait_idle(api, drive)
    server = make_server(api, drives=[attach(drive)])["uuid"]
    feed = Feed(api)
    strato.data_dir.chmod(0o700)  # QEMU's user can no longer reach the pool inside
    try:
        r = api.post(f"servers/{server}/action/?do=start", {})
        assert r.status_code == 202, r.text
        job = wait_for(lambda: [j for j in start_jobs(api, server) if j["state"] != "started"], 120,
                       "the start job to end")[0]
    finally:
        strato.data_dir.chmod(0o755)
    assert job["state"] == "failed", job
    assert "Permission denied" in job["data"]["error"], job
    assert "Traceback" not in job["data"]["error"]
    assert job["resources"] == [f"/api/2.0/servers/{server}/"]
    assert set(job) == {"uuid", "resource_uri", "operation", "state", "data", "resources", "children", "created",
                        "last_modified"}  # the upstream job shape; the reason is an extra key in "data"
    assert api.ok("GET", f"jobs/{job['uuid']}/")["data"]["error"] == job["data"]["error"]
    # The server is back to stopped, its claim released; it lists the job.
    shown = api.ok("GET", f"servers/{server}/")
    assert shown["status"] == "stopped" and shown["runtime"] is None, shown
    assert job["uuid"] in [j["uuid"] for j in shown["jobs"]]
    # The feed told: the job's URI arrived, and reading it then shows the failure.
    wait_for(lambda: job["resource_uri"] in [f["resource_uri"] for f in feed.frames], 30, "the job on the feed")
    assert {"resource_type": "jobs", "resource_uri": job["resource_uri"]} in feed.frames
    feed.close()

    # With the directory open again the same server starts, and that start's job is a success.
    assert api.post(f"servers/{server}/action/?do=start", {}).status_code == 202
    done = wait_for(lambda: [j for j in start_jobs(api, server) if j["uuid"] != job["uuid"]
                             and j["state"] != "started"], 120, "the second start job")[0]
    assert done["state"] == "success" and "error" not in done["data"], done
    assert api.ok("GET", f"servers/{server}/")["status"] == "running"
    assert api.post(f"servers/{server}/action/?do=stop", {}).status_code == 202
    wait_for(lambda: api.ok("GET", f"servers/{server}/")["status"] == "stopped", 60, "the server to stop")
    api.ok("DELETE", f"servers/{server}/?recurse=all_drives", status=204)


def test_failed_resize_keeps_the_volume_size_and_says_why(node: tuple[StratoServer, Api]) -> None:
    strato, api = node
    drive = make_drive(api, size=2**30)["uuid"]
    wait_idle(api, drive)
    volume = strato.data_dir / "pools" / "local" / f"{drive}.qcow2"
    subprocess.run(["chattr", "+i", str(volume)], check=True)  # the host cannot write it, not even as root
    try:
        r = api.post(f"drives/{drive}/action/?do=resize", {"size": 2 * 2**30})
        assert r.status_code == 202, r.text
        job = wait_for(lambda: [j for j in api.ok("GET", "jobs/?limit=0")["objects"] if j["operation"] ==
                                "drive_resize" and f"/drives/{drive}/" in "".join(j["resources"])
                                and j["state"] != "started"], 60, "the resize job")[0]
    finally:
        subprocess.run(["chattr", "-i", str(volume)], check=True)
    assert job["state"] == "failed" and "not permitted" in job["data"]["error"], job
    shown = wait_idle(api, drive)[0]
    assert shown["size"] == 2**30, shown  # what the volume has, not what was asked
    api.ok("DELETE", f"drives/{drive}/", status=204)


def test_failed_clone_says_why_and_leaves_the_source_usable(node: tuple[StratoServer, Api]) -> None:
    strato, api = node
    source = make_drive(api)["uuid"]
    wait_idle(api, source)
    pool = strato.data_dir / "pools" / "local"
    subprocess.run(["chattr", "+i", str(pool)], check=True)  # no new file in the pool, not even as root
    try:
        r = api.post(f"drives/{source}/action/?do=clone", {"name": "copy"})
        assert r.status_code == 202, r.text
        copy = r.json()["objects"][0]["uuid"]
        job = wait_for(lambda: [j for j in api.ok("GET", "jobs/?limit=0")["objects"] if j["operation"] ==
                                "drive_clone" and f"/drives/{copy}/" in "".join(j["resources"])
                                and j["state"] != "started"], 60, "the clone job")[0]
    finally:
        subprocess.run(["chattr", "-i", str(pool)], check=True)
    assert job["state"] == "failed" and job["data"]["error"], job
    assert api.get(f"drives/{copy}/").status_code == 404  # nothing half-done is left
    assert wait_idle(api, source)[0]["status"] == "unmounted"
    api.ok("DELETE", f"drives/{source}/", status=204)


def test_create_and_upload_jobs_succeed(node: tuple[StratoServer, Api]) -> None:
    _strato, api = node
    drive = make_drive(api)["uuid"]
    wait_idle(api, drive)
    jobs = {j["operation"]: j for j in api.ok("GET", "jobs/?limit=0")["objects"] if f"/drives/{drive}/" in
            "".join(j["resources"])}
    assert jobs["drive_create"]["state"] == "success" and jobs["drive_create"]["data"] == {"progress": 100}
    # A raw upload answers once imported: the drive is unmounted right away, its job a success.
    r = api.post("drives/upload/raw.img/", raw=b"\0" * (2 << 20), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    uploaded = api.ok("GET", f"drives/{r.text.strip()}/")
    assert uploaded["status"] == "unmounted", uploaded
    job = api.ok("GET", f"jobs/{uploaded['jobs'][0]['uuid']}/")
    assert (job["operation"], job["state"]) == ("drive_upload", "success")


def test_failed_upload_import_says_why_and_leaves_nothing(node: tuple[StratoServer, Api]) -> None:
    """An image with a backing file is refused by the host: the job says so, the drive is gone."""
    _strato, api = node
    with tempfile.TemporaryDirectory() as scratch:
        image = Path(scratch) / "backed.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(image)],
                       check=True)
        r = api.post("drives/upload/backed.qcow2/", raw=image.read_bytes(),
                     headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    uuid = r.text.strip()
    assert api.get(f"drives/{uuid}/").status_code == 404
    job = next(j for j in api.ok("GET", "jobs/?limit=0")["objects"]
               if j["operation"] == "drive_upload" and f"/drives/{uuid}/" in "".join(j["resources"]))
    assert job["state"] == "failed" and "backing file" in job["data"]["error"], job
    assert "/etc/hostname" not in job["data"]["error"]


def test_serve_refuses_a_data_directory_qemu_cannot_reach() -> None:
    closed = Path(tempfile.mkdtemp())  # as `mktemp -d` makes it: mode 0700, owned by root
    try:
        assert closed.stat().st_mode & 0o777 == 0o700
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "serve", "--data-dir", str(closed / "data"),
                               "--listen", "127.0.0.1:0"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "STRATO_AGENT_PREFIX": f"stflt{os.getpid()}x-"})
        assert proc.returncode != 0
        assert time.monotonic() - started < 60
        out = proc.stdout + proc.stderr
        assert "refusing to serve" in out and str(closed) in out and "libvirt-qemu" in out, out
        assert "Traceback" not in out, out
    finally:
        shutil.rmtree(closed, ignore_errors=True)


def test_doctor_says_what_to_fix_while_serve_runs(node: tuple[StratoServer, Api]) -> None:
    """``strato doctor`` starts its own agent for the host ``strato serve`` runs (two agents at once),
    reports each check, and exits 1 naming the directory QEMU cannot traverse."""
    strato, api = node

    def doctor() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", "doctor", "--data-dir", str(strato.data_dir)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **strato.env})

    fine = doctor()
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert "local: ok  agent up" in fine.stdout and "pool default at" in fine.stdout, fine.stdout
    strato.data_dir.chmod(0o700)
    try:
        closed = doctor()
    finally:
        strato.data_dir.chmod(0o755)
    assert closed.returncode == 1, closed.stdout + closed.stderr
    assert f"local: FIX {strato.data_dir} (mode 0700" in closed.stdout and "chmod o+x" in closed.stdout, closed.stdout
    assert "Traceback" not in closed.stderr, closed.stderr
    assert api.ok("GET", "capabilities/")  # the API node's own agent kept going
    drive = make_drive(api)["uuid"]
    wait_idle(api, drive)
    api.ok("DELETE", f"drives/{drive}/", status=204)
