"""API start → ``running`` as a client sees it, beside ``virsh create`` of the same XML (issue 4).

    .venv/bin/python bench/api_start.py [--runs 5] [--mem-mib 128] [--poll 0.05]

A real ``strato serve`` (SQLite, data directory under /var/tmp, its embedded local host with
``STRATO_LOCAL_VIRT_TYPE=qemu``) and one small server (1 GHz, 128 MiB, no drives, no NICs).
One untimed warm-up start captures the domain's definition (``virsh dumpxml --inactive``, the
XML the agent defined); the copy for ``virsh create`` gets a fresh uuid (in its name, uuid
and paths) so Strato never sees it as its own server.  Then, alternating, ``--runs`` times:

(a) ``POST /servers/{uuid}/action/?do=start``, then ``GET /servers/{uuid}/`` every 50 ms until
    ``status == "running"``: request sent → that GET answered; then stop, wait for ``stopped``;
(b) ``virsh create FILE``: process start → exit; then ``virsh destroy``.

Prints both medians, their ratio and the verdict (target ≤ 1.25).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.strato_process import Api, StratoServer  # noqa: E402

URI = "qemu:///system"
TARGET = 1.25
EMAIL, PASSWORD = "bench-start@example.com", "bench-start-pw"


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, check=check)


def status(api: Api, uuid: str) -> str:
    r = api.get(f"servers/{uuid}/")
    assert r.status_code == 200, r.text
    return r.json()["status"]


def wait_status(api: Api, uuid: str, wanted: str, poll: float, timeout: float = 120) -> float:
    """Poll as a client would; the time until the GET that shows ``wanted`` has answered."""
    start = time.perf_counter()
    deadline = start + timeout
    while time.perf_counter() < deadline:
        if status(api, uuid) == wanted:
            return time.perf_counter() - start
        time.sleep(poll)
    raise TimeoutError(f"server {uuid} not {wanted} after {timeout} s (status {status(api, uuid)})")


def api_start(api: Api, uuid: str, poll: float, timeout: float = 120) -> float:
    start = time.perf_counter()
    deadline = start + timeout
    r = api.post(f"servers/{uuid}/action/?do=start")
    assert r.status_code == 202, f"start: {r.status_code} {r.text}"
    while time.perf_counter() < deadline:
        if status(api, uuid) == "running":
            return time.perf_counter() - start
        time.sleep(poll)
    raise TimeoutError(f"server {uuid} not running after {timeout} s")


def api_stop(api: Api, uuid: str, poll: float) -> None:
    r = api.post(f"servers/{uuid}/action/?do=stop")
    assert r.status_code == 202, f"stop: {r.status_code} {r.text}"
    wait_status(api, uuid, "stopped", poll)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mem-mib", type=int, default=128)
    parser.add_argument("--poll", type=float, default=0.05)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="strato-bench-start-", dir="/var/tmp"))
    base.chmod(0o755)  # QEMU runs as libvirt-qemu: it must traverse to the pool/console/socket dirs
    node = StratoServer(base / "data")
    api_times: list[float] = []
    virsh_times: list[float] = []
    try:
        node.data_dir.mkdir()
        node.data_dir.chmod(0o755)
        api = node.add_user(EMAIL, PASSWORD)
        node.start()
        body = {"objects": [{"name": "bench-start", "cpu": 1000, "mem": args.mem_mib << 20,
                             "vnc_password": "benchpass"}]}
        uuid = api.ok("POST", "servers/", body, status=201)["objects"][0]["uuid"]

        # Warm-up (untimed): wait for the local host to come up (503 until its agent connects),
        # boot once, capture the definition the agent gave libvirt.
        deadline = time.monotonic() + 60
        while True:
            r = api.post(f"servers/{uuid}/action/?do=start")
            if r.status_code == 202:
                break
            if r.status_code != 503 or time.monotonic() > deadline:
                raise RuntimeError(f"warm-up start: {r.status_code} {r.text}")
            time.sleep(0.2)
        wait_status(api, uuid, "running", args.poll)
        name = node.prefix + uuid
        xml = virsh("dumpxml", "--inactive", name).stdout
        api_stop(api, uuid, args.poll)
        twin = str(uuidlib.uuid4())
        assert xml.count(uuid) >= 2, "expected the uuid in <name> and <uuid>"
        xml_path = base / "twin.xml"
        xml_path.write_text(xml.replace(uuid, twin))
        twin_name = node.prefix + twin
        if os.environ.get("BENCH_SHOW_XML"):
            print(xml_path.read_text())

        for run in range(args.runs):
            api_times.append(api_start(api, uuid, args.poll))
            api_stop(api, uuid, args.poll)

            t0 = time.perf_counter()
            virsh("create", str(xml_path))
            virsh_times.append(time.perf_counter() - t0)
            assert virsh("domstate", twin_name).stdout.strip() == "running"
            virsh("destroy", twin_name)
            print(f"run {run}: API start -> running {api_times[-1] * 1000:.0f} ms, "
                  f"virsh create {virsh_times[-1] * 1000:.0f} ms", flush=True)
    finally:
        node.stop()  # also destroys/undefines every domain and pool with its prefix (the twin too)
        shutil.rmtree(base, ignore_errors=True)

    a, v = statistics.median(api_times), statistics.median(virsh_times)
    ratio = a / v
    print(f"median API start -> running (poll {args.poll * 1000:.0f} ms): {a * 1000:.0f} ms")
    print(f"median virsh create:                          {v * 1000:.0f} ms")
    print(f"ratio API / virsh: {ratio:.2f} (target <= {TARGET:.2f}): {'MET' if ratio <= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
