"""Two API nodes on one PostgreSQL (issue 13): a request may land on either.  Sessions, one-time
links, console tokens and uploads made through one node work through the other; a change made
through one reaches a feed subscriber on the other; real clients (pycloudsigma, libcloud)
alternate nodes call by call; concurrent starts with mutual avoid spread over both nodes keep
to avoid and capacity."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import uuid as uuid_module
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import websocket

from tests.cluster.conftest import EMAIL, PASSWORD, SLOT, SLOTS, Cluster, mem_overcommit
from tests.strato_process import wait_for

CHUNK = 2**20
API = "/api/2.0"


def test_each_node_holds_one_host_and_only_it_polls_it(cluster: Cluster) -> None:
    def spread() -> bool:
        rows = cluster.sql("SELECT host, node FROM host_leases WHERE expires > now()")
        return len(rows) == 2 and len({r["node"] for r in rows}) == 2

    wait_for(spread, 60, "one host lease per node")
    nodes = {r["id"] for r in cluster.sql("SELECT id FROM api_nodes WHERE expires > now()")}
    assert len(nodes) == 2
    assert {r["node"] for r in cluster.sql("SELECT node FROM host_leases")} == nodes


def test_login_on_one_node_is_a_session_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.node(0), cluster.node(1)
    browser = requests.Session()
    r = browser.post(f"{a.base}{API}/accounts/action/?do=login", json={"username": EMAIL, "password": PASSWORD},
                     timeout=30)
    assert r.status_code == 200, r.text
    csrf = browser.cookies["csrftoken"]
    assert browser.get(f"{b.base}{API}/drives/", timeout=30).status_code == 200
    body = {"objects": [{"name": "by-session", "size": 2**30, "media": "disk"}]}
    refused = browser.post(f"{b.base}{API}/drives/", json=body, timeout=30)
    assert refused.status_code == 403 and "CSRF" in refused.json()[0]["error_message"]
    made = browser.post(f"{b.base}{API}/drives/", json=body, headers={"X-CSRFToken": csrf}, timeout=30)
    assert made.status_code == 201, made.text
    drive = made.json()["objects"][0]["uuid"]
    assert a.api.ok("GET", f"drives/{drive}/")["name"] == "by-session"
    # Logging out through B ends the session on A too.
    sid = browser.cookies["sessionid"]
    assert browser.post(f"{b.base}{API}/accounts/action/?do=logout", headers={"X-CSRFToken": csrf},
                        timeout=30).status_code == 200
    assert requests.get(f"{a.base}{API}/drives/", cookies={"sessionid": sid}, timeout=30).status_code == 401
    wait_for(lambda: a.api.ok("GET", f"drives/{drive}/")["status"] == "unmounted", 60, "the drive made")
    assert b.api.delete(f"drives/{drive}/").status_code == 204


def _async_cookie(base: str, auth: tuple[str, str]) -> str:
    r = requests.post(f"{base}{API}/accounts/action/?do=authenticate_asynchronous", auth=auth, timeout=30)
    assert r.status_code == 200, r.text
    return r.cookies["async_auth"]


def _frame_about(ws: websocket.WebSocket, uuid: str, timeout: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        ws.settimeout(max(0.1, deadline - time.monotonic()))
        frame = json.loads(ws.recv())
        if uuid in frame["resource_uri"]:
            return frame


def test_feed_subscriber_on_b_hears_a_change_made_through_a(cluster: Cluster) -> None:
    a, b = cluster.node(0), cluster.node(1)
    # The async_auth cookie is made through A and opens the WebSocket on B.
    feed = f"ws://127.0.0.1:{b.server.port}/websocket"
    ws = websocket.create_connection(feed, timeout=10,
                                     header=[f"Cookie: async_auth={_async_cookie(a.base, (EMAIL, PASSWORD))}"])
    eve = _async_cookie(a.base, ("eve@example.com", "eve-pw"))
    other = websocket.create_connection(feed, timeout=10, header=[f"Cookie: async_auth={eve}"])
    try:
        delays = []
        for i in range(3):
            sent = time.monotonic()
            drive = a.api.ok("POST", "drives/", {"objects": [{"name": f"fed-{i}", "size": 2**30, "media": "disk"}]},
                             201)["objects"][0]["uuid"]
            frame = _frame_about(ws, drive)
            delays.append(time.monotonic() - sent)
            assert frame == {"resource_type": "drives", "resource_uri": f"{API}/drives/{drive}/"}
            wait_for(lambda d=drive: a.api.ok("GET", f"drives/{d}/")["status"] == "unmounted", 60, "the drive")
            assert a.api.delete(f"drives/{drive}/").status_code == 204
            _frame_about(ws, drive)  # the deletion too
        print(f"\nfeed A→B: POST through A until the frame on B: {', '.join(f'{d * 1000:.0f} ms' for d in delays)}")
        other.settimeout(1)
        with pytest.raises(websocket.WebSocketTimeoutException):
            other.recv()  # another user's subscriber on B hears nothing of it
    finally:
        ws.close()
        other.close()


def test_upload_begun_on_a_finished_on_b(cluster: Cluster) -> None:
    image = os.urandom(3 * CHUNK)
    a = cluster.node(0)
    drive = a.api.ok("POST", "initupload/", {"name": "across", "size": len(image), "media": "disk"},
                     201)["objects"][0]["uuid"]
    for n in range(3):  # each link made through one node, redeemed through the other
        link = cluster.node(n).api.ok("POST", f"drives/{drive}/action/?do=upload_chunk",
                                      {"chunk_number": n, "chunk_size": CHUNK})["link"]
        r = requests.post(f"{cluster.node(n + 1).base}{link}", data=image[n * CHUNK:(n + 1) * CHUNK], timeout=120)
        assert r.status_code == 200, r.text
        again = requests.post(f"{cluster.node(n).base}{link}", data=b"x", timeout=30)
        assert again.status_code == 404  # one-time, on every node
    shown = a.api.ok("GET", f"drives/{drive}/")
    assert shown["status"] == "unmounted"  # the last chunk's answer came once imported
    job = a.api.ok("GET", f"jobs/{shown['jobs'][0]['uuid']}/")
    assert (job["operation"], job["state"]) == ("drive_upload", "success")
    r = cluster.node(1).api.get(f"drives/{drive}/download/")
    assert r.status_code == 200 and r.content[:len(image)] == image
    assert not list((cluster.root / "data" / "uploads").glob(f"{drive}*"))
    assert cluster.node(1).api.delete(f"drives/{drive}/").status_code == 204
    assert cluster.sql("SELECT count(*) AS n FROM uploads")[0]["n"] == 0


@pytest.fixture
def cloudsigma(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    conf = tmp_path / "cloudsigma.conf"
    conf.write_text(f"api_endpoint = {cluster.node(0).base}{API}/\nws_endpoint = ws://127.0.0.1:"
                    f"{cluster.node(0).server.port}/websocket\nusername = {EMAIL}\npassword = {PASSWORD}\n")
    monkeypatch.setenv("CLOUDSIGMA_CONFIG", str(conf))
    for name in ("cloudsigma.conf", "cloudsigma.generic", "cloudsigma.resource"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    import cloudsigma.resource

    yield cloudsigma.resource


def test_pycloudsigma_alternating_nodes(cloudsigma: ModuleType, cluster: Cluster) -> None:
    def on(i: int, kind: str) -> object:
        return getattr(cloudsigma, kind)(api_endpoint=f"{cluster.node(i).base}{API}/", username=EMAIL,
                                         password=PASSWORD)

    disk = on(0, "Drive").clone(cluster.library_disk, {"name": "pycs-boot"})
    wait_for(lambda: on(1, "Drive").get(disk["uuid"])["status"] == "unmounted", 120, "the clone")
    server = on(1, "Server").create({"name": "pycs-two", "cpu": 1000, "mem": 128 * 2**20, "vnc_password": "secret"})
    server = on(0, "Server").update(server["uuid"], dict(server, drives=[
        {"drive": disk["uuid"], "device": "virtio", "dev_channel": "0:0", "boot_order": 1}]))
    assert on(1, "Drive").get(disk["uuid"])["status"] == "mounted"
    on(1, "Server").start(server["uuid"])
    wait_for(lambda: on(0, "Server").get(server["uuid"])["status"] == "running", 120, "running")
    # A console token made through A opens the guest's display through B.
    vnc = on(0, "Server").open_vnc(server["uuid"])
    token = parse_qs(parse_qs(urlsplit(vnc["console_page_url"]).query)["path"][0].split("?", 1)[1])["token"][0]
    ws = websocket.create_connection(f"ws://127.0.0.1:{cluster.node(1).server.port}/console/websockify?token={token}",
                                     subprotocols=["binary"], timeout=30)
    try:
        assert ws.recv()[:4] == b"RFB "  # the guest's VNC server greets through B's own tunnel
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException):  # single-use on every node
        websocket.create_connection(f"ws://127.0.0.1:{cluster.node(0).server.port}/console/websockify?token={token}",
                                    subprotocols=["binary"], timeout=30)
    on(1, "Server").close_vnc(server["uuid"])
    on(0, "Server").stop(server["uuid"])
    wait_for(lambda: on(1, "Server").get(server["uuid"])["status"] == "stopped", 120, "stopped")
    on(1, "Server").delete_with_all_drives(server["uuid"])
    assert disk["uuid"] not in {d["uuid"] for d in on(0, "Drive").list(query_params={"limit": 0})}


def test_libcloud_alternating_nodes(cluster: Cluster) -> None:
    import libcloud.security
    from libcloud.compute.drivers.cloudsigma import CloudSigma_2_0_NodeDriver, CloudSigmaNodeSize
    from libcloud.compute.types import NodeState

    previous = libcloud.security.CA_CERTS_PATH
    libcloud.security.CA_CERTS_PATH = str(cluster.cert)  # the nodes share one data directory: one certificate
    try:
        drivers = [CloudSigma_2_0_NodeDriver(EMAIL, PASSWORD, host="127.0.0.1", port=n.tls_port) for n in cluster.nodes]
        for d in drivers:
            d.DRIVE_TRANSITION_SLEEP_INTERVAL = 0.5
        image = next(i for i in drivers[1].list_images() if i.id == cluster.library_disk)
        size = CloudSigmaNodeSize(id="tiny", name="tiny", cpu=1, ram=128, disk=1, bandwidth=None, price=0,
                                  driver=drivers[0])
        created = drivers[0].create_node(name="lc-two", size=size, image=image, ex_vnc_password="secret")
        wait_for(lambda: drivers[1].ex_get_node(created.id).state == NodeState.RUNNING, 120, "running")
        assert created.id in {n.id for n in drivers[0].list_nodes()}
        assert drivers[1].ex_stop_node(created)
        wait_for(lambda: drivers[0].ex_get_node(created.id).state == NodeState.STOPPED, 120, "stopped")
        assert drivers[1].destroy_node(drivers[0].ex_get_node(created.id), ex_delete_drives=True)
        wait_for(lambda: created.id not in {n.id for n in drivers[0].list_nodes()}, 60, "destroyed")
    finally:
        libcloud.security.CA_CERTS_PATH = previous


def test_ten_concurrent_starts_with_mutual_avoid_over_both_nodes(cluster: Cluster) -> None:
    """Five pairs, each server avoiding its twin, started at once through both nodes: every pair is
    split over the two hosts (feasible, so kept), and each host gets exactly what its memory takes."""
    api = cluster.node(0).api
    uuids = [api.ok("POST", "servers/", {"objects": [{"name": f"avoid-{i}", "cpu": 500, "mem": SLOT,
                                                      "vnc_password": "secret"}]}, 201)["objects"][0]["uuid"]
             for i in range(2 * SLOTS)]

    def twin(i: int) -> str:
        return uuids[i ^ 1]

    def start(i: int) -> requests.Response:
        return cluster.node(i // 2).api.post(f"servers/{uuids[i]}/action/?do=start&avoid={twin(i)}")

    try:
        with ThreadPoolExecutor(len(uuids)) as pool:
            answers = list(pool.map(start, range(len(uuids))))
        assert [r.status_code for r in answers] == [202] * len(uuids), (
            [r.text[:200] for r in answers], cluster.sql("SELECT name, state, mem_used, mem_capacity FROM hosts"))
        placed = {r["uuid"]: r["host"] for r in cluster.sql("SELECT uuid, host FROM servers WHERE host IS NOT NULL")}
        assert set(placed) == set(uuids)
        assert all(placed[uuids[i]] != placed[twin(i)] for i in range(len(uuids))), placed
        assert sorted(list(placed.values()).count(h) for h in ("h0", "h1")) == [SLOTS, SLOTS]
        for host in cluster.sql("SELECT mem_used, mem_capacity FROM hosts"):
            assert host["mem_used"] == SLOTS * SLOT <= host["mem_capacity"] * mem_overcommit()
        # Full: one more start is refused on either node, in the API's error format.
        extra = api.ok("POST", "servers/", {"objects": [{"name": "no-room", "cpu": 500, "mem": SLOT,
                                                         "vnc_password": "secret"}]}, 201)["objects"][0]["uuid"]
        uuids.append(extra)
        refused = cluster.node(1).api.post(f"servers/{extra}/action/?do=start")
        assert refused.status_code == 503 and refused.json()[0]["error_type"], refused.text
        for uuid in uuids[:-1]:
            wait_for(lambda u=uuid: cluster.node(1).api.ok("GET", f"servers/{u}/")["status"] == "running", 180,
                     "running")
    finally:
        for i, uuid in enumerate(uuids):
            cluster.node(i).api.post(f"servers/{uuid}/action/?do=stop")
        for uuid in uuids:
            wait_for(lambda u=uuid: api.ok("GET", f"servers/{u}/")["status"] == "stopped", 120, "stopped")
            assert api.delete(f"servers/{uuid}/").status_code == 204


def _migration(cluster: Cluster, node: str | None, *, queued: bool = False) -> str:
    """A ``server_migrate`` job of the kind ``strato servers migrate`` queues, as the store has it
    once ``node`` picked it up (or still queued): the rows, without a guest (these hosts, one
    libvirtd, cannot migrate)."""
    job = str(uuid_module.uuid4())
    [owner] = cluster.sql("SELECT uuid FROM users WHERE email = $1", EMAIL)
    cluster.sql("INSERT INTO jobs (uuid, owner_uuid, operation, state, progress, resources, source_uuid, params, "
                "created, last_modified) VALUES ($1, $2, 'server_migrate', 'started', 0, '[]', $3, $4, now(), now())",
                job, owner["uuid"], str(uuid_module.uuid4()),
                json.dumps({"queued": queued, "to": None, "source": "h0", "target": "h1"}))
    if node is not None:
        cluster.sql("INSERT INTO job_leases (job_uuid, node) VALUES ($1, $2)", job, node)
    return job


def _node_id(cluster: Cluster, i: int) -> str:
    """The id a node leases its jobs under (that of a drive_create job made through it)."""
    drive = cluster.node(i).api.ok("POST", "drives/", {"objects": [{"name": f"whose-{i}", "size": 2**20,
                                                                    "media": "disk"}]}, 201)["objects"][0]["uuid"]
    [row] = cluster.sql("SELECT l.node FROM job_leases l JOIN jobs j ON j.uuid = l.job_uuid "
                        "WHERE j.source_uuid = $1 AND j.operation = 'drive_create'", drive)
    wait_for(lambda: cluster.node(i).api.ok("GET", f"drives/{drive}/")["status"] == "unmounted", 60, "created")
    assert cluster.node(i).api.delete(f"drives/{drive}/").status_code == 204
    return row["node"]


def test_a_running_migration_belongs_to_its_node(cluster: Cluster) -> None:
    """Issue 12: a picked-up migration is leased to the node running it.  When node B restarts, the
    migration node A runs is left to A (it used to be failed by every starting node); B's own and a
    dead node's end failed, saying why; a queued one is picked up and leased to the node that runs it."""
    a, b = cluster.node(0), cluster.node(1)
    node_a, node_b = _node_id(cluster, 0), _node_id(cluster, 1)
    assert node_a != node_b
    on_a, on_b, on_dead = _migration(cluster, node_a), _migration(cluster, node_b), _migration(cluster, "gone-1")
    try:
        b.server.stop()  # a clean stop: B leaves the cluster at once
        b.server.start()
        wait_for(lambda: len(cluster.sql("SELECT id FROM api_nodes WHERE expires > now()")) == 2, 60, "B back")
        assert b.api.ok("GET", f"jobs/{on_a}/")["state"] == "started"
        for job in (on_b, on_dead):
            seen = b.api.ok("GET", f"jobs/{job}/")
            assert seen["state"] == "failed" and "stopped before it ended" in seen["data"]["error"], seen
        assert a.api.ok("GET", f"jobs/{on_a}/")["state"] == "started"  # and A did not fail it either

        queued = _migration(cluster, None, queued=True)  # its server is gone: whoever runs it fails it
        wait_for(lambda: a.api.ok("GET", f"jobs/{queued}/")["state"] == "failed", 30, "the queued one run")
        [lease] = cluster.sql("SELECT node FROM job_leases WHERE job_uuid = $1", queued)
        alive = {r["id"] for r in cluster.sql("SELECT id FROM api_nodes WHERE expires > now()")}
        assert lease["node"] in alive, (lease, alive)
    finally:
        cluster.sql("UPDATE jobs SET state = 'failed', error = 'test over' WHERE uuid = $1", on_a)
