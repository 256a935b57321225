"""Drives on Ceph RBD beside a qcow2 directory pool, in one run (issue 13).

    .venv/bin/python bench/storage.py [--size-mib 1024] [--runs 3] [--read-mib 512]

A real one-machine Ceph cluster (``tests/ceph/cluster.py``), a real ``strato serve`` with one
local host that has both a directory pool (storage type ``zadara``) and the Ceph pool (``dssd``).
A ``--size-mib`` image of random bytes (every block allocated, so no copy can skip holes) goes
into the library twice, once per pool.  Then, ``--runs`` times each, alternating:

(a) clone of the RBD library drive through Strato: ``POST /libdrives/{uuid}/action/?do=clone`` →
    the GET that shows the clone ``unmounted`` (polled every 20 ms);
(b) the same for the directory pool's library drive (libvirt's copy of the qcow2 file);
(c) ``rbd clone`` by hand of the RBD library image's protected snapshot (one ``rbd`` process),
    and the whole by-hand sequence with a fresh snapshot (snap create + protect + clone).

Sequential read throughput: ``qemu-img bench`` (QEMU's own block layer, as a guest's virtio-blk
requests go through it; 1 MiB reads, queue depth 8, O_DIRECT for the file) of ``--read-mib``
from a clone on RBD (librbd) and from the clone's qcow2 file on the local disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ceph.cluster import CephCluster, running_cluster  # noqa: E402
from tests.strato_process import Api, StratoServer, qemu_reachable_dir, wait_for  # noqa: E402

POOL = "strato"
MiB = 2**20


def clone_through_api(api: Api, library: str, poll: float = 0.02) -> tuple[float, str]:
    start = time.perf_counter()
    uuid = api.ok("POST", f"libdrives/{library}/action/?do=clone", {"name": "bench"}, 202)["objects"][0]["uuid"]
    while api.ok("GET", f"drives/{uuid}/")["status"] != "unmounted":
        time.sleep(poll)
    return time.perf_counter() - start, uuid


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def read_throughput(args: list[str], total_mib: int) -> float:
    """MiB/s of sequential 1 MiB reads through qemu-img bench."""
    count = total_mib  # 1 MiB each
    start = time.perf_counter()
    proc = subprocess.run(["qemu-img", "bench", "-c", str(count), "-s", "1M", "-d", "8", *args],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"qemu-img bench failed: {proc.stderr.strip()}")
    return total_mib / (time.perf_counter() - start)


def volume_of(server: StratoServer, uuid: str) -> tuple[str, str]:
    with contextlib.closing(sqlite3.connect(server.data_dir / "strato.db")) as con:
        return con.execute("SELECT pool, volume FROM drives WHERE uuid = ?", (uuid,)).fetchone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--read-mib", type=int, default=512)
    args = parser.parse_args()

    started = time.perf_counter()
    with running_cluster((POOL,)) as cluster:
        print(f"Ceph cluster usable after {time.perf_counter() - started:.1f} s (mon + mgr + 1 OSD, from nothing)")
        root = qemu_reachable_dir("bench-storage")
        server = StratoServer(root / "data", extra_env={"STRATO_STORAGE_POOLS": json.dumps(
            {"dssd": "ceph", "zadara": "default"})})
        try:
            run(args, cluster, root, server)
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, cluster: CephCluster, root: Path, server: StratoServer) -> None:
    for sub in ("pool", "console", "s"):
        (root / sub).mkdir()
    rbd = (f"name=ceph,pool={POOL},user=strato,keyring={cluster.client_keyring},mon={cluster.monitor}")
    server.cli("hosts", "add", "local", "--local", "--agent-command",
               f"env PYTHONPATH={ROOT} {sys.executable} -m agents.cli --stdio --prefix {server.prefix} "
               f"--virt-type qemu --pool default={root / 'pool'} --rbd-pool {rbd} "
               f"--console-log-dir {root / 'console'} --socket-dir {root / 's'}")
    server.cli("users", "create", "bench@example.com", "--password", "bench-pw")
    api = Api(server.base, ("bench@example.com", "bench-pw"))
    with tempfile.NamedTemporaryFile(dir=root, suffix=".raw") as image:
        for _ in range(args.size_mib):
            image.write(os.urandom(MiB))
        image.flush()
        libraries = {}
        for storage_type in ("dssd", "zadara"):
            t = time.perf_counter()
            libraries[storage_type] = server.cli(
                "libdrives", "import", image.name, "--name", f"bench-{storage_type}", "--os", "linux", "--arch",
                "64", "--media", "disk", "--storage-type", storage_type).splitlines()[0]
            print(f"library import of {args.size_mib} MiB into {storage_type}: {time.perf_counter() - t:.1f} s")
    server.start()
    wait_for(lambda: api.get("capabilities/").status_code == 200, 60, "the API")
    server.wait_host_up()

    _pool, rbd_library = volume_of(server, libraries["dssd"])
    ceph = ["rbd", "--cluster", cluster.name, "-c", str(cluster.conf), "--keyring", str(cluster.admin_keyring)]
    rbd_api, dir_api, by_hand, by_hand_full = [], [], [], []
    made: list[str] = []
    for n in range(args.runs):
        seconds, uuid = clone_through_api(api, libraries["dssd"])
        rbd_api.append(seconds)
        made.append(uuid)
        seconds, uuid = clone_through_api(api, libraries["zadara"])
        dir_api.append(seconds)
        made.append(uuid)
        snaps = json.loads(subprocess.run([*ceph, "snap", "ls", "--format", "json", f"{POOL}/{rbd_library}"],
                                          check=True, capture_output=True, text=True).stdout)
        snap = snaps[0]["name"]  # the protected snapshot libvirt made for Strato's clones
        by_hand.append(timed([*ceph, "clone", f"{POOL}/{rbd_library}@{snap}", f"{POOL}/by-hand-{n}"]))
        start = time.perf_counter()
        subprocess.run([*ceph, "snap", "create", f"{POOL}/{rbd_library}@hand{n}"], check=True, capture_output=True)
        subprocess.run([*ceph, "snap", "protect", f"{POOL}/{rbd_library}@hand{n}"], check=True, capture_output=True)
        subprocess.run([*ceph, "clone", f"{POOL}/{rbd_library}@hand{n}", f"{POOL}/by-hand-full-{n}"], check=True,
                       capture_output=True)
        by_hand_full.append(time.perf_counter() - start)

    def med(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:8.0f} ms"

    print(f"\nclone of a {args.size_mib} MiB library drive, median of {args.runs}:")
    print(f"  RBD through Strato (API request -> unmounted)      {med(rbd_api)}")
    print(f"  qcow2 directory pool through Strato (same)         {med(dir_api)}   "
          f"({statistics.median(dir_api) / statistics.median(rbd_api):.0f}x the RBD clone)")
    print(f"  rbd clone by hand (one rbd process)                {med(by_hand)}")
    print(f"  rbd snap create + protect + clone by hand          {med(by_hand_full)}")

    # Sequential reads: an RBD clone (reads fall through to the parent) and the qcow2 file copy.
    rbd_clone = volume_of(server, made[0])[1]
    dir_clone = root / "pool" / volume_of(server, made[1])[1]
    # qemu-img bench takes no --object, so the (throwaway) test key goes in the legacy rbd: filename.
    port = cluster.monitor.rsplit(":", 1)[1]
    rbd_args = ["-f", "raw", f"rbd:{POOL}/{rbd_clone}:id=strato:key={cluster.key}:conf=/dev/null:"
                             f"mon_host=127.0.0.1\\:{port}"]
    read_mib = min(args.read_mib, args.size_mib)
    rbd_rates, file_rates = [], []
    for _ in range(args.runs):
        rbd_rates.append(read_throughput(rbd_args, read_mib))
        file_rates.append(read_throughput(["-f", "qcow2", "-t", "none", str(dir_clone)], read_mib))
    print(f"\nsequential read of {read_mib} MiB (qemu-img bench, 1 MiB, depth 8), median of {args.runs}:")
    print(f"  RBD clone through librbd                          {statistics.median(rbd_rates):8.0f} MiB/s")
    print(f"  local qcow2 file (O_DIRECT)                       {statistics.median(file_rates):8.0f} MiB/s")
    for uuid in made:
        api.delete(f"drives/{uuid}/")


if __name__ == "__main__":
    main()
