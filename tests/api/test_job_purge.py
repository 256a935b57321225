"""Finished jobs are purged (issue 11): by ``strato jobs purge [--older-than]`` and, once older than
``job_max_age``, in the background; a job still running is never removed."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.api.conftest import make_drive, wait_idle
from tests.strato_process import ROOT, Api, StratoServer, qemu_reachable_dir, wait_for


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[StratoServer, Api]]:
    root = qemu_reachable_dir("purge")
    server = StratoServer(root / "data", extra_env={"STRATO_AGENT_PREFIX": f"stpur{secrets.token_hex(3)}-"})
    try:
        api = server.add_user("pia@example.com", "pia-pw")
        server.start()
        server.wait_host_up()
        yield server, api
    finally:
        server.stop()  # removes the prefix's libvirt objects
        shutil.rmtree(root, ignore_errors=True)


def jobs_of(api: Api, drive: str) -> list[dict]:
    return [j for j in api.ok("GET", "jobs/?limit=0")["objects"] if f"/drives/{drive}/" in "".join(j["resources"])]


def a_running_job(api: Api) -> dict:
    """An upload waiting for its chunks: its ``drive_upload`` job stays ``started``."""
    drive = api.ok("POST", "initupload/", {"name": "waits", "size": 2**20, "media": "disk"}, 201)["objects"][0]
    [job] = jobs_of(api, drive["uuid"])
    assert job["state"] == "started", job
    return job


def finished_job(api: Api) -> dict:
    drive = make_drive(api)["uuid"]
    wait_idle(api, drive)
    [job] = wait_for(lambda: [j for j in jobs_of(api, drive) if j["state"] == "success"], 30, "drive_create done")
    return job


def test_jobs_purge_removes_finished_jobs_only(node: tuple[StratoServer, Api]) -> None:
    strato, api = node
    running, done = a_running_job(api), finished_job(api)
    assert "0 finished job(s)" in strato.cli("jobs", "purge", "--older-than", "1h")
    assert api.get(f"jobs/{done['uuid']}/").status_code == 200
    out = strato.cli("jobs", "purge", "--older-than", "0")
    assert out.startswith("1 finished job(s) older than 0:00:00 removed"), out
    assert api.get(f"jobs/{done['uuid']}/").status_code == 404
    assert api.ok("GET", f"jobs/{running['uuid']}/")["state"] == "started"
    bad = subprocess.run([sys.executable, "-m", "orchestrator.cli", "jobs", "purge", "--older-than", "soon",
                          "--data-dir", str(strato.data_dir)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a duration" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_serve_purges_old_finished_jobs_in_the_background(node: tuple[StratoServer, Api]) -> None:
    strato, api = node
    strato.stop()
    strato.env["STRATO_JOB_MAX_AGE"] = "2"
    strato.start()
    strato.wait_host_up()
    running, drive = a_running_job(api), make_drive(api)["uuid"]
    [done] = jobs_of(api, drive)  # just made (it may be purged two seconds after it ends)
    wait_for(lambda: api.get(f"jobs/{done['uuid']}/").status_code == 404, 30, "the finished job purged")
    time.sleep(3)  # older than job_max_age now, and purged at least twice since: still there, as it runs
    assert api.ok("GET", f"jobs/{running['uuid']}/")["state"] == "started"
