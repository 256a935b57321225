"""Issue 4, "Orchestration": placement, concurrency, real guests, crashes and hosts on three hosts.

One API node and three real hosts (tests/cloud/conftest.py: each its own libvirtd, reached over
SSH) serve the whole module; each test leaves its servers stopped so the next one starts with
empty hosts.  Where a server runs is asked of the hosts' own libvirtds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.cloud.conftest import SERVER_CPU, SERVERS_PER_HOST, SHUTDOWN_WINDOW, Cluster, MiB, wait_for
from tests.strato_process import ROOT, Api, upload

GUEST_IMAGE = ROOT / "build" / "guest" / "strato-guest.img"


# --- helpers ------------------------------------------------------------------------------------

def create_servers(api: Api, count: int, name: str, mem: int = 64 * MiB, **extra: Any) -> list[str]:
    body = {"objects": [{"name": f"{name}-{i}", "cpu": SERVER_CPU, "mem": mem, "vnc_password": "secret12",
                         **extra} for i in range(count)]}
    return [s["uuid"] for s in api.ok("POST", "servers/", body, 201)["objects"]]


def status(api: Api, uuid: str) -> str:
    return api.ok("GET", f"servers/{uuid}/")["status"]


def wait_status(api: Api, uuids: list[str] | str, wanted: str, timeout: float = 60) -> None:
    uuids = [uuids] if isinstance(uuids, str) else uuids
    wait_for(lambda: all(status(api, u) == wanted for u in uuids), timeout,
             f"{wanted}: {[(u, status(api, u)) for u in uuids]}")


def start(api: Api, uuid: str, avoid: list[str] = ()) -> requests.Response:  # type: ignore[assignment]
    query = f"&avoid={','.join(avoid)}" if avoid else ""
    return api.post(f"servers/{uuid}/action/?do=start{query}")


def must_start(api: Api, uuid: str, avoid: list[str] = ()) -> None:  # type: ignore[assignment]
    r = start(api, uuid, avoid)
    assert r.status_code == 202, r.text


def stop_all(api: Api) -> None:
    """Stop every server of the user that is not stopped, and wait for it."""
    servers = api.ok("GET", "servers/?limit=0")["objects"]
    active = [s["uuid"] for s in servers if s["status"] != "stopped"]
    for uuid in active:
        api.post(f"servers/{uuid}/action/?do=stop")
    wait_status(api, active, "stopped", 60)


def groups(api: Api, kind: str = "servers") -> list[list[str]]:
    return api.ok("GET", f"{kind}/availability_groups/")


def create_drive(api: Api, name: str, size: int, media: str = "disk", **extra: Any) -> str:
    body = {"name": name, "size": size, "media": media, **extra}
    uuid = api.ok("POST", "drives/", body, 201)["objects"][0]["uuid"]
    wait_for(lambda: api.ok("GET", f"drives/{uuid}/")["status"] == "unmounted", 60, f"drive {name}")
    return uuid


def drive_status(api: Api, uuid: str) -> str | None:
    r = api.get(f"drives/{uuid}/")
    return r.json()["status"] if r.status_code == 200 else None


def guest_report(cluster: Cluster, uuid: str, timeout: float = 90) -> dict[str, Any]:
    """The test guest's report from its serial log on the host that runs it."""
    log = cluster.console_log(uuid)
    text = wait_for(lambda: log.exists() and "STRATO-READY" in (t := log.read_text(errors="replace")) and t,
                    timeout, f"STRATO-READY in {log}")
    body = text.rsplit("STRATO-REPORT-BEGIN", 1)[1].split("STRATO-REPORT-END", 1)[0]
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    report: dict[str, Any] = {"block": [], "lines": lines}
    for line in lines:
        if line.startswith("block "):
            report["block"].append(dict(kv.split("=", 1) for kv in line.split()[1:]))
        elif "=" in line and " " not in line:
            key, value = line.split("=", 1)
            report[key] = value
    return report


def assert_error(r: requests.Response, status: int, error_type: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body, list) and body and body[0]["error_type"] == error_type, body
    assert body[0]["error_message"], body


# --- placement ------------------------------------------------------------------------------------

def test_hosts_are_up(cluster: Cluster) -> None:
    hosts = cluster.hosts_list()
    assert {name: h["address"] for name, h in hosts.items()} == {
        h.name: f"ssh://root@{h.address}:22" for h in cluster.hosts.hosts}
    assert {h["state"] for h in hosts.values()} == {"up"}


def test_running_server_takes_only_name_meta_and_tags(cluster: Cluster) -> None:
    """Spec §14: while not stopped, a PUT applies name/meta/tags and silently ignores the rest."""
    api = cluster.api
    [uuid] = create_servers(api, 1, "edit-running")
    tag = api.ok("POST", "tags/", {"name": "running-tag"}, 201)["objects"][0]["uuid"]
    must_start(api, uuid)
    wait_status(api, uuid, "running")
    before = api.ok("GET", f"servers/{uuid}/")
    got = api.ok("PUT", f"servers/{uuid}/", {"name": "renamed", "meta": {"k": "v"}, "tags": [tag], "cpu": 2000,
                                             "mem": 128 * MiB, "nics": [{"model": "virtio"}], "smp": 2})
    assert (got["name"], got["meta"], [t["uuid"] for t in got["tags"]]) == ("renamed", {"k": "v"}, [tag])
    assert (got["cpu"], got["mem"], got["smp"], got["nics"]) == (before["cpu"], before["mem"], before["smp"], [])
    assert got["status"] == "running"
    assert_error(api.request("DELETE", f"servers/{uuid}/"), 403, "permission")  # running: not deletable
    stop_all(api)
    got = api.ok("PUT", f"servers/{uuid}/", {"cpu": 2000})  # stopped again: the edit applies
    assert got["cpu"] == 2000


def test_start_with_avoid_spreads_servers(cluster: Cluster) -> None:
    api = cluster.api
    a, b, c, d = create_servers(api, 4, "avoid")
    must_start(api, a)
    must_start(api, b, [a])
    must_start(api, c, [a, b])
    wait_status(api, [a, b, c], "running")
    placed = {u: cluster.host_of(u) for u in (a, b, c)}
    assert len(set(placed.values())) == 3, placed
    mine = [sorted(g) for g in groups(api) if set(g) & {a, b, c}]
    assert sorted(mine) == sorted([[a], [b], [c]])
    assert api.ok("GET", f"servers/availability_groups/{a}/") == [a]
    # More avoided servers than hosts: the rightmost avoid (c) is the one given up.
    must_start(api, d, [a, b, c])
    wait_status(api, d, "running")
    assert cluster.host_of(d) == placed[c]
    assert sorted(api.ok("GET", f"servers/availability_groups/{d}/")) == sorted([c, d])
    assert sorted([c, d]) in [sorted(g) for g in groups(api)]
    stop_all(api)
    assert groups(api) == []


def test_drive_clone_with_avoid_lands_on_another_host(cluster: Cluster) -> None:
    api = cluster.api
    source = create_drive(api, "clone-src", 16 * MiB)
    source_host = cluster.host_of_volume(source)
    r = api.post(f"drives/{source}/action/?do=clone&avoid={source}", {"name": "clone-dst"})
    assert r.status_code == 202, r.text
    copy = r.json()["objects"][0]["uuid"]
    wait_for(lambda: drive_status(api, copy) == "unmounted" and drive_status(api, source) == "unmounted", 60,
             "clone settled")
    copy_host = cluster.host_of_volume(copy)
    assert copy_host != source_host
    drive_groups = [sorted(g) for g in groups(api, "drives") if set(g) & {source, copy}]
    assert sorted(drive_groups) == sorted([[source], [copy]])
    assert api.ok("GET", f"drives/availability_groups/{copy}/") == [copy]
    # And a drive of the storage type mapped to the shared pool lives in the shared directory.
    shared = create_drive(api, "shared-drive", 16 * MiB, storage_type="zadara")
    assert cluster.volume_files(shared) == [cluster.shared_dir / f"{shared}.qcow2"]
    for uuid in (source, copy, shared):
        assert api.delete(f"drives/{uuid}/").status_code == 204
    wait_for(lambda: not any(cluster.volume_files(u) for u in (source, copy, shared)), 30, "volumes deleted")


# --- concurrency ----------------------------------------------------------------------------------

def test_concurrent_starts_respect_capacity_and_avoid(cluster: Cluster) -> None:
    api = cluster.api
    mem = 64 * MiB
    # Three concurrent starts that avoid each other always fit apart: three hosts, whatever the order.
    trio = create_servers(api, 3, "trio", mem=mem)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda u: Api(api.base, api.auth).post(
            f"servers/{u}/action/?do=start&avoid={','.join(v for v in trio if v != u)}"), trio))
    assert [r.status_code for r in answers] == [202] * 3, [r.text for r in answers]
    wait_status(api, trio, "running")
    assert len({cluster.host_of(u) for u in trio}) == 3  # three libvirtds
    stop_all(api)

    uuids = create_servers(api, 20, "flood", mem=mem)
    samples: list[dict[str, int]] = []
    done = threading.Event()

    def watch() -> None:  # capacity must hold at every moment, not only at the end
        while not done.is_set():
            samples.append(cluster.running_counts())
            time.sleep(0.2)

    def go(uuid: str) -> requests.Response:
        # A fresh session per thread: requests.Session is not thread-safe.
        return Api(api.base, api.auth).post(
            f"servers/{uuid}/action/?do=start&avoid={','.join(u for u in uuids if u != uuid)}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(20) as pool:
            answers = dict(zip(uuids, pool.map(go, uuids), strict=True))
        accepted = [u for u, r in answers.items() if r.status_code == 202]
        refused = [u for u, r in answers.items() if r.status_code != 202]
        for uuid in refused:
            assert_error(answers[uuid], 503, "backend")
        wait_for(lambda: all(status(api, u) in ("running", "stopped") for u in accepted), 180, "starts settle")
    finally:
        done.set()
        watcher.join()
    assert [u for u in accepted if status(api, u) != "running"] == []
    assert all(status(api, u) == "stopped" for u in refused)
    # Capacity binds: SERVERS_PER_HOST per host fit, the others were refused.
    assert len(accepted) == 3 * SERVERS_PER_HOST and len(refused) == 20 - 3 * SERVERS_PER_HOST
    by_group = [g for g in groups(api) if set(g) & set(uuids)]
    assert len(by_group) == 3  # mutual avoid: every host took some (an empty host is never skipped)
    for group in by_group:
        assert len(group) * SERVER_CPU <= cluster.cpu_capacity and len(group) * mem <= cluster.mem_capacity
        assert len(group) == SERVERS_PER_HOST
    assert max(max(s.values(), default=0) for s in samples) <= SERVERS_PER_HOST
    stop_all(api)


# --- real guests ----------------------------------------------------------------------------------

def attach(api: Api, server: str, drives: list[tuple[str, str, str, int | None]]) -> None:
    body = api.ok("GET", f"servers/{server}/")
    body["drives"] = [{"drive": d, "device": dev, "dev_channel": ch, "boot_order": boot} for d, dev, ch, boot in drives]
    api.ok("PUT", f"servers/{server}/", body)


def test_real_guest_lifecycle_clone_and_recursive_delete(cluster: Cluster) -> None:
    if not GUEST_IMAGE.exists():
        pytest.skip("build the test guest first: tests/guest/build-image.sh")
    api = cluster.api
    image = upload(api, "strato-guest.img", GUEST_IMAGE.read_bytes())
    marker = upload(api, "marker.img", b"STRATO-MARKER:ignore-acpi\n" + b"\0" * (1 * MiB - 26))
    data = create_drive(api, "data", 16 * MiB)
    cdrom = create_drive(api, "cdrom", 1 * MiB, media="cdrom")
    # Placement of plain drives is by the hosts' pool facts: all of them on one storage host.
    storage_host = cluster.host_of_volume(image)
    assert {cluster.host_of_volume(u) for u in (marker, data, cdrom)} == {storage_host}
    [server] = create_servers(api, 1, "guest", mem=128 * MiB)
    attach(api, server, [(image, "virtio", "0:0", 1), (data, "virtio", "0:1", None), (cdrom, "ide", "0:1", None)])
    assert {drive_status(api, u) for u in (image, data, cdrom)} == {"mounted"}

    # Start: the guest boots on the host that holds its drives and reports what it sees.
    must_start(api, server)
    wait_status(api, server, "running")
    assert cluster.host_of(server) == storage_host
    report = guest_report(cluster, server)
    assert report["cpus"] == "1"
    buses = sorted((b["bus"], b["marker"]) for b in report["block"])
    assert buses == [("ata", "none"), ("virtio", "none"), ("virtio", "none")], report["lines"]
    assert api.ok("GET", f"servers/{server}/")["runtime"]["active_since"]

    # ACPI shutdown: the guest powers off, the server is stopped and its claim released.
    r = api.post(f"servers/{server}/action/?do=shutdown")
    assert r.status_code == 202, r.text
    wait_status(api, server, "stopped", 60)
    assert cluster.defined_on(server) == []
    assert all(server not in g for g in groups(api))

    # A guest that ignores ACPI: "stopping" through the window, then "running" again.
    attach(api, server, [(image, "virtio", "0:0", 1), (data, "virtio", "0:1", None), (cdrom, "ide", "0:1", None),
                         (marker, "virtio", "0:2", None)])
    must_start(api, server)
    wait_status(api, server, "running")
    report = guest_report(cluster, server)
    assert "ignore-acpi" in [b["marker"] for b in report["block"]], report["lines"]
    began = time.monotonic()
    assert api.post(f"servers/{server}/action/?do=shutdown").status_code == 202
    assert status(api, server) == "stopping"
    wait_status(api, server, "running", SHUTDOWN_WINDOW + 30)
    assert time.monotonic() - began >= SHUTDOWN_WINDOW - 1
    assert cluster.running_on(server) == [storage_host]
    assert api.post(f"servers/{server}/action/?do=stop").status_code == 202
    wait_status(api, server, "stopped")

    # Clone: a server_clone job whose drive_clone children succeed; disks copied, the cdrom shared.
    r = api.post(f"servers/{server}/action/?do=clone", {"name": "guest-clone"})
    assert r.status_code == 202, r.text
    clone = r.json()["uuid"]

    def clone_job() -> dict[str, Any] | None:
        jobs = api.ok("GET", "jobs/?limit=0")["objects"]
        found = [j for j in jobs if j["operation"] == "server_clone" and any(clone in u for u in j["resources"])]
        return found[0] if found and found[0]["state"] != "started" else None

    job = wait_for(clone_job, 120, "server_clone job")
    assert job["state"] == "success", job
    assert len(job["children"]) == 3 and {c["operation"] for c in job["children"]} == {"drive_clone"}
    assert {c["state"] for c in job["children"]} == {"success"}, job
    clone_body = api.ok("GET", f"servers/{clone}/")
    clone_drives = {d["drive"]["uuid"]: d for d in clone_body["drives"]}
    assert cdrom in clone_drives and not {image, data, marker} & set(clone_drives)
    copies = [u for u in clone_drives if u != cdrom]
    assert len(copies) == 3
    wait_for(lambda: all(drive_status(api, u) == "mounted" for u in [*copies, image, data, marker]), 30,
             "clone drives mounted")
    assert all(cluster.volume_files(u) for u in copies)
    # The clone boots the copied image too.
    must_start(api, clone)
    wait_status(api, clone, "running")
    assert guest_report(cluster, clone)["cpus"] == "1"
    assert api.post(f"servers/{clone}/action/?do=stop").status_code == 202
    wait_status(api, clone, "stopped")

    # recurse=disks: the clone's three disk copies go (rows and files); the shared cdrom stays.
    assert api.delete(f"servers/{clone}/?recurse=disks").status_code == 204
    assert api.get(f"servers/{clone}/").status_code == 404
    assert all(api.get(f"drives/{u}/").status_code == 404 for u in copies)
    wait_for(lambda: not any(cluster.volume_files(u) for u in copies), 30, "disk copies' volumes deleted")
    assert drive_status(api, cdrom) == "mounted" and cluster.volume_files(cdrom)

    # recurse=cdroms: only the cdrom goes; the disks stay, unmounted.
    assert api.delete(f"servers/{server}/?recurse=cdroms").status_code == 204
    assert api.get(f"drives/{cdrom}/").status_code == 404
    wait_for(lambda: not cluster.volume_files(cdrom), 30, "cdrom volume deleted")
    assert {drive_status(api, u) for u in (image, data, marker)} == {"unmounted"}
    assert all(cluster.volume_files(u) for u in (image, data, marker))

    # recurse=all_drives: disks and cdroms of the server go; a drive it does not list stays.
    cdrom2 = create_drive(api, "cdrom2", 1 * MiB, media="cdrom")
    [third] = create_servers(api, 1, "recurse-all")
    attach(api, third, [(image, "virtio", "0:0", 1), (data, "virtio", "0:1", None), (cdrom2, "ide", "0:1", None)])
    assert api.delete(f"servers/{third}/?recurse=all_drives").status_code == 204
    assert all(api.get(f"drives/{u}/").status_code == 404 for u in (image, data, cdrom2))
    wait_for(lambda: not any(cluster.volume_files(u) for u in (image, data, cdrom2)), 30, "volumes deleted")
    assert drive_status(api, marker) == "unmounted" and cluster.volume_files(marker)
    assert api.delete(f"drives/{marker}/").status_code == 204
    wait_for(lambda: not cluster.volume_files(marker), 30, "marker volume deleted")


# --- crashes ----------------------------------------------------------------------------------------

def test_api_node_killed_mid_operations_recovers(cluster: Cluster) -> None:
    api, server = cluster.api, cluster.server
    uuids = create_servers(api, 10, "crash")
    # Big enough (non-zero data) that copying it to another host is still under way at the kill.
    source = upload(api, "crash-src.img", b"\x5a" * 128 * MiB)
    source_host = cluster.host_of_volume(source)
    pool = ThreadPoolExecutor(11)
    cloning = pool.submit(lambda: Api(api.base, api.auth).post(f"drives/{source}/action/?do=clone&avoid={source}",
                                                               {"name": "crash-copy"}))
    starts = [pool.submit(lambda u=u: Api(api.base, api.auth).post(f"servers/{u}/action/?do=start"))
              for u in uuids]
    clone_answer = cloning.result()
    assert server.proc is not None
    server.proc.kill()  # SIGKILL: no cleanup, background work cut short
    server.proc.wait()
    pool.shutdown()
    answered = [f.result().status_code for f in starts if f.exception() is None]
    assert set(answered) <= {202}, answered  # the others were cut off by the kill
    assert clone_answer.status_code == 202, clone_answer.text
    copy = clone_answer.json()["objects"][0]["uuid"]

    server.start()  # same data directory and database
    cluster.wait_hosts_up()

    def settled() -> bool:
        servers = {s["uuid"]: s["status"] for s in api.ok("GET", "servers/?limit=0")["objects"]}
        drives = {d["uuid"]: d["status"] for d in api.ok("GET", "drives/?limit=0")["objects"]}
        jobs = api.ok("GET", "jobs/?limit=0")["objects"]
        return (all(servers[u] in ("running", "stopped") for u in uuids)
                and all(status in ("mounted", "unmounted") for status in drives.values())
                and all(job["state"] != "started" for job in jobs))

    wait_for(settled, 90, "servers, drives and jobs settle after the restart")
    servers = {s["uuid"]: s["status"] for s in api.ok("GET", "servers/?limit=0")["objects"]}
    assert set(uuids) <= set(servers)  # nothing lost
    for uuid in uuids:
        running_on, defined_on = cluster.running_on(uuid), cluster.defined_on(uuid)
        if servers[uuid] == "running":
            assert len(running_on) == 1 and defined_on == running_on, (uuid, running_on, defined_on)
        else:
            assert running_on == [], (uuid, running_on)
    # No claim leaks: the hosts count exactly the running servers.
    running = sum(1 for u in uuids if servers[u] == "running")
    counted = sum(h["servers"] for h in cluster.hosts_list().values())
    assert counted == running
    # The clone either finished (its volume on another host) or failed and left nothing behind.
    job = next(j for j in api.ok("GET", "jobs/?limit=0")["objects"]
               if j["operation"] == "drive_clone" and any(copy in r for r in j["resources"]))
    assert job["state"] in ("success", "failed")
    if job["state"] == "success":
        assert drive_status(api, copy) == "unmounted"
        assert cluster.host_of_volume(copy) != source_host
    else:
        assert api.get(f"drives/{copy}/").status_code == 404
    assert drive_status(api, source) == "unmounted"
    # The restarted node still works: every server starts and stops.
    for uuid in uuids:
        if servers[uuid] == "stopped":
            must_start(api, uuid)
    wait_status(api, uuids, "running")
    stop_all(api)
    for uuid in (source, copy):
        api.delete(f"drives/{uuid}/")
    wait_for(lambda: not any(cluster.volume_files(u) for u in (source, copy)), 30, "volumes deleted")


def agent_pids(prefix: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", f"--prefix {prefix} "], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_lost_agent_marks_servers_unavailable_until_it_reconnects(cluster: Cluster) -> None:
    api = cluster.api
    uuids = create_servers(api, 3, "agent-loss")
    for i, uuid in enumerate(uuids):
        must_start(api, uuid, uuids[:i])
    wait_status(api, uuids, "running")
    on = {cluster.host_of(u): u for u in uuids}
    name = cluster.names[1]
    lost, kept = on[name], [u for h, u in on.items() if h != name]
    host = cluster.host(name)
    domain_pid = cluster.qemu_pid(name, lost)
    [pid] = agent_pids(host.prefix)
    # The host's sshd listener goes away (its sessions stay) so that reconnecting fails for a while.
    cluster.hosts.stop_sshd(host)
    try:
        os.kill(pid, signal.SIGKILL)
        wait_status(api, lost, "unavailable", 30)
        assert cluster.hosts_list()[name]["state"] == "down"
        assert all(status(api, u) == "running" for u in kept)
        assert cluster.running_on(lost) == [name]  # the host's libvirtd keeps the guest
    finally:
        cluster.hosts.start_sshd(host)
    wait_status(api, lost, "running", 60)
    assert cluster.hosts_list()[name]["state"] == "up"
    assert cluster.qemu_pid(name, lost) == domain_pid  # same guest
    assert agent_pids(host.prefix) and agent_pids(host.prefix) != [pid]
    stop_all(api)


# --- hosts command line -------------------------------------------------------------------------------

def test_hosts_list_drain_and_remove(cluster: Cluster) -> None:
    api, server = cluster.api, cluster.server
    uuids = create_servers(api, 3, "hosts-cli")
    for i, uuid in enumerate(uuids):
        must_start(api, uuid, uuids[:i])
    wait_status(api, uuids, "running")
    hosts = cluster.hosts_list()
    assert {name: (h["state"], h["servers"]) for name, h in hosts.items()} == {n: ("up", 1) for n in cluster.names}
    assert all(h["cores"] and h["memory"] and h["virt_type"] == "qemu" for h in hosts.values())
    stop_all(api)

    first, second, drained = cluster.names
    server.cli("hosts", "drain", drained)
    assert cluster.hosts_list()[drained]["state"] == "draining"
    # Avoid would prefer the empty host, but a draining host takes nothing new.
    more = create_servers(api, 4, "drained")
    for i, uuid in enumerate(more):
        must_start(api, uuid, more[:i])
    wait_status(api, more, "running")
    assert {cluster.host_of(u) for u in more} == {first, second}
    assert cluster.hosts_list()[drained]["servers"] == 0
    assert cluster.running_counts()[drained] == 0

    # A host that runs servers cannot be removed; an empty one can, and the API node lets it go.
    busy = cluster.host_of(more[0])
    refused = subprocess.run([sys.executable, "-m", "orchestrator.cli", "hosts", "remove", busy, "--data-dir",
                              str(server.data_dir)], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, **server.env})
    assert refused.returncode == 1 and "still runs servers" in refused.stderr, refused.stderr
    assert busy in cluster.hosts_list()
    stop_all(api)
    server.cli("hosts", "remove", drained)
    assert drained not in cluster.hosts_list()
    prefix = cluster.host(drained).prefix
    wait_for(lambda: not agent_pids(prefix), 30, "the removed host's agent to go")
    # Starts keep working on the remaining hosts.
    must_start(api, more[0])
    wait_status(api, more[0], "running")
    stop_all(api)
