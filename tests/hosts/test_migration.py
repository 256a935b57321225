"""Issue 12: real hosts, live migration, drain (tests/hosts/conftest.py: three hosts, each its own libvirtd).

Where a server runs is asked of each host's own libvirtd, never of Strato.  The guests print a
counter on their serial console (tests/guest/init, meta.counter "on"): a migration must neither
reset it nor stop the server in the API.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

import libvirt
import pytest

from tests.consoles.rfb import RfbClient, TcpStream
from tests.hosts.conftest import Cloud, MiB
from tests.strato_process import ROOT, Api, upload, wait_for

GUEST_IMAGE = ROOT / "build" / "guest" / "strato-guest.img"
TICK = re.compile(rb"STRATO-TICK (\d+) ([\d.]+)")
VNC_PASSWORD = "secret12"


# --- helpers ------------------------------------------------------------------------------------

def create_server(api: Api, name: str, drive: str | None = None, counter: bool = False) -> str:
    body: dict[str, Any] = {"name": name, "cpu": 1000, "mem": 128 * MiB, "vnc_password": VNC_PASSWORD,
                            "meta": {"counter": "on"} if counter else {}}
    if drive:
        body["drives"] = [{"drive": drive, "device": "virtio", "dev_channel": "0:0", "boot_order": 1}]
    return api.ok("POST", "servers/", body, 201)["objects"][0]["uuid"]


def start(cloud: Cloud, uuid: str, avoid: list[str] = ()) -> None:  # type: ignore[assignment]
    query = f"&avoid={','.join(avoid)}" if avoid else ""
    r = cloud.api.post(f"servers/{uuid}/action/?do=start{query}")
    assert r.status_code == 202, r.text
    wait_for(lambda: status(cloud.api, uuid) == "running", 120, f"{uuid} running")


def stop(cloud: Cloud, uuids: list[str]) -> None:
    for uuid in uuids:
        cloud.api.post(f"servers/{uuid}/action/?do=stop")
    wait_for(lambda: all(status(cloud.api, u) == "stopped" for u in uuids), 60, "stopped")


def status(api: Api, uuid: str) -> str:
    return api.ok("GET", f"servers/{uuid}/")["status"]


def clone(api: Api, source: str, name: str, **extra: Any) -> str:
    uuid = api.ok("POST", f"drives/{source}/action/?do=clone", {"name": name, **extra}, 202)["objects"][0]["uuid"]
    wait_for(lambda: api.ok("GET", f"drives/{uuid}/")["status"] == "unmounted", 120, f"clone {name}")
    return uuid


def the_host(cloud: Cloud, uuid: str) -> str:
    [host] = cloud.running_on(uuid)
    return host


def console(cloud: Cloud, host: str, uuid: str) -> bytes:
    path = cloud.host(host).console_log(cloud.host(host).prefix + uuid)
    return path.read_bytes() if path.exists() else b""


def ticks(cloud: Cloud, host: str, uuid: str) -> list[tuple[int, float]]:
    return [(int(n), float(up)) for n, up in TICK.findall(console(cloud, host, uuid))]


def wait_ticks(cloud: Cloud, host: str, uuid: str, at_least: int, timeout: float = 120) -> None:
    wait_for(lambda: (t := ticks(cloud, host, uuid)) and t[-1][0] >= at_least, timeout,
             f"{at_least} ticks of {uuid} on {host}")


def cli(cloud: Cloud, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--data-dir", str(cloud.server.data_dir)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, **cloud.server.env},
                          timeout=900)


class StatusWatch:
    """Every status the API shows for a server while something happens (polled every 0.1 s)."""

    def __init__(self, api: Api, uuid: str) -> None:
        self.api, self.uuid = api, uuid
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.seen.append(status(self.api, self.uuid))
            time.sleep(0.1)

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def migrate(cloud: Cloud, uuid: str, *extra: str) -> dict[str, Any]:
    out = cli(cloud, "servers", "migrate", uuid, *extra)
    result = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {"stderr": out.stderr}
    result["returncode"] = out.returncode
    return result


def assert_counter_continued(cloud: Cloud, uuid: str, source: str, target: str) -> None:
    before, after = ticks(cloud, source, uuid), ticks(cloud, target, uuid)
    assert before and after, (before[-3:], after[:3])
    # The target's console log starts with the next tick: the same boot, not a new one.
    assert before[-1][0] < after[0][0] <= before[-1][0] + 2, (before[-3:], after[:3])
    assert after[0][1] >= before[-1][1], (before[-3:], after[:3])  # the guest's uptime went on
    assert b"STRATO-REPORT-BEGIN" not in console(cloud, target, uuid)  # no boot on the target


async def vnc_frame(host: str, port: int) -> None:
    client = RfbClient(await TcpStream.connect(host, port))
    try:
        init = await client.handshake(VNC_PASSWORD)
        assert init.name.startswith("QEMU"), init
        update = await asyncio.wait_for(client.full_frame(), 30)
        assert sum(w * h for _, _, w, h, _ in update.rects) == init.width * init.height
    finally:
        await client.close()


async def serial_lines(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        assert await asyncio.wait_for(reader.readexactly(10), 10) == b"Password: "
        writer.write(VNC_PASSWORD.encode() + b"\n")
        data = b""
        while not TICK.search(data) and len(data) < 1 << 16:
            data += await asyncio.wait_for(reader.read(4096), 10)
        return data
    finally:
        writer.close()


@pytest.fixture(scope="module")
def image(cloud: Cloud) -> str:
    return upload(cloud.api, "strato-guest.img", GUEST_IMAGE.read_bytes())


@pytest.fixture(scope="module")
def mover(cloud: Cloud, image: str) -> str:
    """A running guest with its drive on the shared pool and its counter on (the module's tests move it)."""
    drive = clone(cloud.api, image, "shared-guest", storage_type="zadara")
    uuid = create_server(cloud.api, "mover", drive, counter=True)
    start(cloud, uuid)
    wait_ticks(cloud, the_host(cloud, uuid), uuid, 20)
    return uuid


# --- tests --------------------------------------------------------------------------------------

def test_hosts_are_separate_hypervisors(cloud: Cloud) -> None:
    """Each host: its own libvirtd (its own host uuid), reached by the API node over SSH only."""
    uuids = set()
    for host in cloud.hosts.hosts:
        conn = libvirt.open(host.uri)
        try:
            uuids.add(re.search(r"<uuid>([^<]+)</uuid>", conn.getCapabilities())[1])  # type: ignore[index]
        finally:
            conn.close()
    assert uuids == {h.host_uuid for h in cloud.hosts.hosts}
    listed = cloud.hosts_list()
    assert {name: h["address"] for name, h in listed.items()} == {
        h.name: f"ssh://root@{h.address}:22" for h in cloud.hosts.hosts}
    assert {h["state"] for h in listed.values()} == {"up"}
    for host in cloud.hosts.hosts:  # nothing but sshd listens on TCP: libvirtds meet each other over SSH too
        listening = subprocess.run(host.inside("ss", "-Hltnp"), capture_output=True, text=True, check=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"{host.address}:22"], listening


def test_avoiding_servers_run_in_different_libvirtds(cloud: Cloud) -> None:
    servers = [create_server(cloud.api, f"avoid-{i}") for i in range(3)]
    try:
        for i, uuid in enumerate(servers):
            start(cloud, uuid, servers[:i])
        hosts = [cloud.running_on(u) for u in servers]
        assert all(len(h) == 1 for h in hosts), hosts
        assert len({h[0] for h in hosts}) == 3, hosts
    finally:
        stop(cloud, servers)
    assert not any(cloud.running_on(u) for u in servers)


def test_live_migration_keeps_the_guest_running(cloud: Cloud, mover: str) -> None:
    """A guest on shared storage moves (the scheduler picks the host), then back (--to): its counter goes
    on, the API shows it running throughout, only the new host's libvirtd has it, VNC works there."""
    uuid = mover
    source = the_host(cloud, uuid)
    with StatusWatch(cloud.api, uuid) as watch:
        result = migrate(cloud, uuid)
    assert result["returncode"] == 0 and result["state"] == "success", str(result)
    target = result["to"]
    assert result["from"] == source and target != source
    assert set(watch.seen) == {"running"}, sorted(set(watch.seen))
    assert cloud.running_on(uuid) == [target] and cloud.defined_on(uuid) == [target]
    wait_ticks(cloud, target, uuid, ticks(cloud, source, uuid)[-1][0] + 10)
    assert_counter_continued(cloud, uuid, source, target)
    assert cloud.hosts_list()[target]["servers"] == 1 and cloud.hosts_list()[source]["servers"] == 0
    job = cloud.api.ok("GET", f"jobs/{result['job']}/")
    assert (job["operation"], job["state"]) == ("server_migrate", "success"), job

    # A VNC tunnel opened after the move reaches the guest on its new host.
    opened = cloud.api.post(f"servers/{uuid}/action/?do=open_vnc")
    assert opened.status_code == 202, opened.text
    url = opened.json()["vnc_url"]
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    asyncio.run(vnc_frame(host, int(port)))
    # And the serial console tunnel: the guest's counter arrives through it, from the new host.
    opened = cloud.api.post(f"servers/{uuid}/action/?do=open_console")
    assert opened.status_code == 202, opened.text
    host, port = opened.json()["console_url"].split("://", 1)[1].rsplit(":", 1)
    assert TICK.search(asyncio.run(serial_lines(host, int(port)))), "no counter through the serial tunnel"

    back = migrate(cloud, uuid, "--to", source)
    assert back["returncode"] == 0 and back["to"] == source, back
    assert cloud.running_on(uuid) == [source] and cloud.defined_on(uuid) == [source]
    assert status(cloud.api, uuid) == "running"


def test_drain_moves_every_server_and_copies_local_drives(cloud: Cloud, image: str, mover: str) -> None:
    """Three servers on one host (one with its drive on the host's local pool): drain moves them all."""
    names = [h.name for h in cloud.hosts.hosts]
    local = clone(cloud.api, image, "local-guest")  # next to the upload: a local pool
    [home] = [h.name for h in cloud.hosts.hosts if (h.pool_dir / f"{local}.qcow2").exists()]
    others = [n for n in names if n != home]
    servers = [create_server(cloud.api, "drain-local", local, counter=True),
               *(create_server(cloud.api, f"drain-{i}") for i in range(2))]
    try:
        for name in others:  # so that every server starts on `home`
            assert cli(cloud, "hosts", "drain", name).returncode == 0
        for uuid in servers:
            start(cloud, uuid)
        for name in others:
            cloud.server.cli("hosts", "resume", name)
        assert all(cloud.running_on(u) == [home] for u in servers)
        everyone = set(servers) | ({mover} if cloud.running_on(mover) == [home] else set())
        wait_ticks(cloud, home, servers[0], 20)

        with StatusWatch(cloud.api, servers[0]) as watch:
            out = cli(cloud, "hosts", "drain", home, "--parallel", "2")
        assert out.returncode == 0, (out.stdout, out.stderr)
        report = json.loads(out.stdout)
        assert report["cannot_move"] == {} and {m["server"] for m in report["moved"]} == everyone, report
        assert out.stderr.count(f"drain {home}: ") == len(everyone), out.stderr  # progress, one line per server
        assert set(watch.seen) == {"running"}, sorted(set(watch.seen))
        conn = libvirt.open(cloud.host(home).uri)
        try:
            assert conn.listAllDomains(0) == []  # the drained host is empty
        finally:
            conn.close()
        assert cloud.hosts_list()[home]["state"] == "draining"
        assert all(len(cloud.running_on(u)) == 1 and cloud.running_on(u)[0] != home for u in everyone)

        # The local drive was copied: its volume is on the new host's pool now, not on the old one's.
        moved_to = the_host(cloud, servers[0])
        assert (cloud.host(moved_to).pool_dir / f"{local}.qcow2").exists()
        assert not (cloud.host(home).pool_dir / f"{local}.qcow2").exists()
        wait_ticks(cloud, moved_to, servers[0], ticks(cloud, home, servers[0])[-1][0] + 10)
        assert_counter_continued(cloud, servers[0], home, moved_to)
    finally:
        stop(cloud, servers)
        cloud.server.cli("hosts", "resume", home)


def test_target_libvirtd_killed_mid_migration(cloud: Cloud, mover: str) -> None:
    """The target's libvirtd dies while the guest streams to it: the server runs on at the source and
    the job failed, saying why."""
    uuid = mover
    source = the_host(cloud, uuid)
    target = next(h for h in cloud.hosts.hosts if h.name != source)
    try:
        wait_ticks(cloud, source, uuid, 20)
        result: dict[str, Any] = {}
        mover = threading.Thread(target=lambda: result.update(migrate(cloud, uuid, "--to", target.name)))
        with StatusWatch(cloud.api, uuid) as watch:
            mover.start()
            wait_for(lambda: target.name in cloud.defined_on(uuid), 120,
                     "the incoming domain on the target", interval=0.05)
            cloud.hosts.kill_libvirtd(target)
            mover.join(600)
        assert result["returncode"] == 1 and result["state"] == "failed", result
        assert result["error"] and target.name in result["error"], result
        assert cloud.running_on(uuid) == [source]
        assert set(watch.seen) == {"running"}, sorted(set(watch.seen))
        seen = ticks(cloud, source, uuid)[-1][0]
        wait_ticks(cloud, source, uuid, seen + 10)  # the guest goes on, at the source
        job = cloud.api.ok("GET", f"jobs/{result['job']}/")
        assert job["state"] == "failed", job
        # Its agent went with the libvirtd it was connected to: the host is down until one is back.
        wait_for(lambda: cloud.hosts_list()[target.name]["state"] == "down", 60, "target down")
    finally:
        cloud.hosts.start_libvirtd(target)
        wait_for(lambda: cloud.hosts_list()[target.name]["state"] == "up", 120, "target up again")


def test_api_node_killed_mid_migration(cloud: Cloud, mover: str) -> None:
    """The API node is killed (-9) while the guest streams.  Restarted, it fails the job (the node
    that ran it is gone) and the store follows the guest to where libvirt ran the migration to:
    the server is running on that host, in the API and in that host's libvirtd, and nowhere else."""
    uuid = mover
    source = the_host(cloud, uuid)
    target = next(h for h in cloud.hosts.hosts if h.name != source)
    wait_ticks(cloud, source, uuid, 20)
    result: dict[str, Any] = {}
    command = threading.Thread(target=lambda: result.update(migrate(cloud, uuid, "--to", target.name)))
    command.start()
    wait_for(lambda: target.name in cloud.defined_on(uuid), 120, "the incoming domain on the target", interval=0.05)
    assert cloud.server.proc is not None
    cloud.server.proc.kill()
    cloud.server.proc.wait()
    wait_for(lambda: cloud.running_on(uuid) in ([source], [target.name]) and cloud.defined_on(uuid)
             == cloud.running_on(uuid), 120, "libvirt done with the migration")  # one way or the other
    [now] = cloud.running_on(uuid)
    cloud.server.start()
    command.join(300)
    assert result["returncode"] == 1 and result["state"] == "failed", result
    assert "stopped before it ended" in result["error"], result
    wait_for(lambda: cloud.hosts_list()[now]["servers"] == 1, 120, f"the server recorded on {now}")
    time.sleep(5)  # five heartbeats (STRATO_HEARTBEAT 1): a reconciliation that got it wrong has acted
    assert status(cloud.api, uuid) == "running"
    assert cloud.running_on(uuid) == [now] and cloud.defined_on(uuid) == [now]
    assert {name: h["servers"] for name, h in cloud.hosts_list().items()} == {
        h.name: int(h.name == now) for h in cloud.hosts.hosts}
    seen = ticks(cloud, now, uuid)[-1][0]
    wait_ticks(cloud, now, uuid, seen + 10)  # the guest goes on where it is


def test_evacuate_a_dead_host_restarts_its_servers_elsewhere(cloud: Cloud, mover: str) -> None:
    """The host of a server on shared storage dies: evacuate --cold boots it on another host."""
    dead = cloud.host(the_host(cloud, mover))
    cloud.hosts.kill_host(dead)
    wait_for(lambda: status(cloud.api, mover) == "unavailable", 60, "the server unavailable")
    out = cli(cloud, "hosts", "evacuate", dead.name, "--cold")
    assert out.returncode == 0, (out.stdout, out.stderr)
    report = json.loads(out.stdout)
    assert [r["server"] for r in report["restarted"]] == [mover] and report["cannot_move"] == {}, report
    wait_for(lambda: status(cloud.api, mover) == "running", 120, "running again")
    [now] = cloud.running_on(mover)
    assert now != dead.name
    wait_for(lambda: b"STRATO-READY" in console(cloud, now, mover), 120, "a new boot on the new host")
    stop(cloud, [mover])
    assert cloud.running_on(mover) == []
