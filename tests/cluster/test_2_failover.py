"""kill -9 of one API node while it runs a start, a clone and an upload's import (issue 13): the
other node takes its hosts and jobs over once the dead node's lease expired, and completes or
cleanly fails each; nothing is left ``started``, no guest or volume without its row, no agent of
the dead node left running.  Runs last in the package: node A stays dead."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import requests

from tests.cluster.conftest import LEASE, SLOT, Cluster
from tests.strato_process import domain_names, wait_for

CHUNK = 8 * 2**20


def _agents_of(prefix: str) -> list[int]:
    """Agent processes (ours: started by the test's nodes) that serve a host of this prefix."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agents.cli" in argv and prefix.encode() in argv:
            found.append(int(pid))
    return found


def test_kill_one_node_during_start_clone_and_import(cluster: Cluster) -> None:
    a, b = cluster.node(0), cluster.node(1)
    image = os.urandom(2 * CHUNK)
    assert len(_agents_of(cluster.host_prefixes["h0"])) == 2  # one connection per node
    upload = a.api.ok("POST", "initupload/", {"name": "killed", "size": len(image), "media": "disk"},
                      201)["objects"][0]["uuid"]
    link = a.api.ok("POST", f"drives/{upload}/action/?do=upload_chunk", {"chunk_number": 0, "chunk_size": CHUNK})
    assert requests.post(f"{a.base}{link['link']}", data=image[:CHUNK], timeout=60).status_code == 200
    server = a.api.ok("POST", "servers/", {"objects": [{"name": "killed-start", "cpu": 500, "mem": SLOT,
                                                        "vnc_password": "secret"}]}, 201)["objects"][0]["uuid"]
    last = a.api.ok("POST", f"drives/{upload}/action/?do=upload_chunk", {"chunk_number": 1, "chunk_size": CHUNK})

    def send_last() -> None:  # its answer never comes: the node dies while importing
        with contextlib.suppress(requests.RequestException):
            requests.post(f"{a.base}{last['link']}", data=image[CHUNK:], timeout=60)

    sender = threading.Thread(target=send_last)
    sender.start()
    time.sleep(0.5)  # the last chunk on its way, its import about to begin
    clone = a.api.ok("POST", f"libdrives/{cluster.big_disk}/action/?do=clone", {"name": "killed-clone"},
                     202)["objects"][0]["uuid"]
    assert a.api.post(f"servers/{server}/action/?do=start").status_code == 202
    a.server.proc.kill()  # kill -9, the boot just begun
    a.server.proc.wait()
    killed = time.monotonic()
    sender.join(60)
    times: dict[str, float] = {}

    def settled_start() -> bool:
        status = b.api.ok("GET", f"servers/{server}/")["status"]
        return status in ("running", "stopped") and all(
            j["state"] != "started" for j in b.api.ok("GET", "jobs/?limit=0")["objects"]
            if j["operation"] == "server_start" and f"/servers/{server}/" in str(j["resources"]))

    wait_for(settled_start, 4 * LEASE + 60, "the start settled by B")
    times["start"] = time.monotonic() - killed
    r = b.api.get(f"drives/{clone}/")

    def settled_clone() -> bool:
        r = b.api.get(f"drives/{clone}/")
        return r.status_code == 404 or r.json()["status"] == "unmounted"

    wait_for(settled_clone, 4 * LEASE + 120, "the clone settled by B")
    times["clone"] = time.monotonic() - killed

    resent = []

    def settled_upload() -> bool:
        status = b.api.ok("GET", f"drives/{upload}/")["status"]
        if status == "uploading" and b.api.get(f"drives/{upload}/upload/?resumableChunkNumber=2&"
                                               f"resumableChunkSize={CHUNK}").status_code == 404:
            # The last chunk never arrived before the kill: the client sends it again, through B.
            again = b.api.ok("POST", f"drives/{upload}/action/?do=upload_chunk",
                             {"chunk_number": 1, "chunk_size": CHUNK})
            requests.post(f"{b.base}{again['link']}", data=image[CHUNK:], timeout=120)
            resent.append(True)
        return status == "unmounted"

    wait_for(settled_upload, 4 * LEASE + 120, "the upload imported by B", interval=1)
    times["upload"] = time.monotonic() - killed
    measured = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    print(f"\nfailover after kill -9 (lease {LEASE:.0f} s): {measured}")

    # What each ended as, and nothing lost or leaked.
    status = b.api.ok("GET", f"servers/{server}/")["status"]
    log = a.server.log.read_text()  # the nodes share their data directory, and so this log
    again = "importing again" in log
    print(f"server {status}, clone {'resumed by B' if 'resuming a drive clone' in log else 'done by A'}, upload "
          f"{'resent its last chunk' if resent else 'imported again by B' if again else 'imported by A'}")
    domains = {name for prefix in cluster.host_prefixes.values() for name in domain_names(prefix)}
    assert (any(server in d for d in domains)) == (status == "running"), (status, domains)
    r = b.api.get(f"drives/{clone}/")
    clone_job = [j for j in b.api.ok("GET", "jobs/?limit=0")["objects"] if j["operation"] == "drive_clone"
                 and f"/drives/{clone}/" in str(j["resources"])]
    assert clone_job and clone_job[-1]["state"] == ("success" if r.status_code == 200 else "failed")
    assert b.api.get(f"drives/{upload}/download/").content[:len(image)] == image
    assert [j["uuid"] for j in b.api.ok("GET", "jobs/?limit=0")["objects"] if j["state"] == "started"] == []
    volumes = {row["volume"] for row in cluster.sql("SELECT volume FROM drives WHERE volume IS NOT NULL")}
    files = {p.name for name in cluster.host_prefixes for p in (cluster.root / name / "pool").iterdir()}
    assert files == volumes, (files ^ volumes)
    leases = cluster.sql("SELECT DISTINCT node FROM host_leases WHERE expires > now()")
    assert len(leases) == 1  # B holds both hosts now
    wait_for(lambda: all(len(_agents_of(p)) == 1 for p in cluster.host_prefixes.values()), 30,
             "the dead node's agents gone")
    # Clean up through B.
    if status == "running":
        b.api.post(f"servers/{server}/action/?do=stop")
        wait_for(lambda: b.api.ok("GET", f"servers/{server}/")["status"] == "stopped", 120, "stopped")
    assert b.api.delete(f"servers/{server}/").status_code == 204
    for drive in (upload, clone):
        assert b.api.delete(f"drives/{drive}/").status_code in (204, 404)
    assert cluster.sql("SELECT count(*) AS n FROM uploads")[0]["n"] == 0
