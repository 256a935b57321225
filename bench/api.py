"""API node benchmark: Strato beside a bare aiohttp handler serving the same JSON, in one run (issue 14).

    .venv/bin/python bench/api.py [--servers 1000,10000] [--requests 2000] [--concurrency 32] [--lists 40]
                                  [--writes 50] [--postgresql]

Every figure is uncached (``Cache-Control: no-cache``; Strato has no read cache any more) and taken
while a writer changes another server 50 times a second (``--writes``; the load a statistics
poll of running servers and other clients put on the node).  Targets:

* ``GET /servers/{uuid}/`` at concurrency 32: at least 20% of the bare handler's rate, p99 < 20 ms;
* ``GET /servers/detail/?limit=0``, sequential: p50 < 40 ms with 1,000 servers, < 400 ms with 10,000;
* 1,000 servers created in 10 bulk ``POST /servers/`` of 100: < 3 s (beside them, servers created
  one per request, the drives they attach and the same 1,000 deleted in 10 bulk ``DELETE /servers/``,
  reported without a target; the bulk figures with the server's CPU seconds).

``--postgresql`` runs Strato on a throw-away PostgreSQL cluster (as the store tests start one).
Beside each rate the server's CPU per request (from /proc, the writer's changes included): on a
shared machine the rates follow the load, the CPU cost does not.

A real ``strato serve`` (SQLite in a temp dir; its one host is the store tests' in-memory fake
agent, so drives settle without libvirt) and a bare aiohttp app (no auth, no database, the same
response bytes fetched from Strato first) each run in their own process; the load generator is an
aiohttp client in this process, on loopback, with Basic auth for Strato.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 2**30
EMAIL, PASSWORD = "bench@example.com", "bench-pw"
GZIP = False


# --- the bare baseline (run as ``bench/api.py --bare PORT DIR``) ----------------------------------


def bare_main(port: int, bodies: Path) -> None:
    from aiohttp import web

    single, listing = (bodies / "single.json").read_bytes(), (bodies / "list.json").read_bytes()

    async def one(request: web.Request) -> web.Response:
        return web.Response(body=single, content_type="application/json", charset="utf-8")

    async def many(request: web.Request) -> web.Response:
        return web.Response(body=listing, content_type="application/json", charset="utf-8")

    app = web.Application()
    app.router.add_get("/api/2.0/servers/detail/", many)
    app.router.add_get("/api/2.0/servers/{uuid}/", one)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- set-up --------------------------------------------------------------------------------------


class Populated:
    def __init__(self) -> None:
        self.uuids: list[str] = []
        self.drive_seconds = self.server_seconds = 0.0
        self.drive_cpu = self.server_cpu = 0.0  # the Strato process's CPU seconds during those POSTs
        self.pid: int | None = None
        self.servers = 0
        self.tags: list[dict[str, Any]] = []
        self.cdrom: dict[str, Any] = {}

    def cpu(self) -> float:
        return cpu_seconds(self.pid) if self.pid else 0.0


def populate(api, start_at: int, count: int, done: Populated | None = None,  # type: ignore[no-untyped-def]
             per_request: int = 100) -> Populated:
    """Servers ``start_at``..``count``, each with a disk, a shared cdrom, two NICs, meta and two tags;
    the time of the server POSTs (``per_request`` objects each) apart from the drives'."""
    done = done or Populated()
    if not done.tags:
        done.tags = api.ok("POST", "tags/", {"objects": [{"name": "web", "meta": {"team": "blue"}},
                                                         {"name": "prod"}]}, 201)["objects"]
        done.cdrom = api.ok("POST", "drives/", {"objects": [{"name": "install-iso", "size": GiB, "media": "cdrom",
                                                             "allow_multimount": True}]}, 201)["objects"][0]
    tags, cdrom = done.tags, done.cdrom
    for start in range(start_at, count, 100):
        batch = range(start, min(start + 100, count))
        t0, c0 = time.perf_counter(), done.cpu()
        disks = api.ok("POST", "drives/", {"objects": [
            {"name": f"disk-{i}", "size": 20 * GiB, "media": "disk", "meta": {"os": "debian"}} for i in batch]},
            201)["objects"]
        done.drive_seconds += time.perf_counter() - t0
        done.drive_cpu += done.cpu() - c0
        # The volumes settle (their status writes) before the servers are timed: a fixed pause was
        # too short on a loaded machine (on PostgreSQL the settling then ran into the timed POSTs).
        deadline = time.monotonic() + 120
        while api.ok("GET", "drives/?status=creating&limit=1")["meta"]["total_count"]:
            assert time.monotonic() < deadline, "drives still creating"
            time.sleep(0.05)
        bodies = [{
            "name": f"server-{i:04d}", "cpu": 2000, "mem": 2 * GiB, "vnc_password": "secret-vnc",
            "meta": {"description": f"web node {i}", "ssh_public_key": "ssh-ed25519 AAAAC3Nza" + "x" * 60,
                     "env": "prod"},
            "tags": [t["uuid"] for t in tags],
            "drives": [{"drive": disk["uuid"], "device": "virtio", "dev_channel": "0:0", "boot_order": 1},
                       {"drive": cdrom["uuid"], "device": "ide", "dev_channel": "0:0", "boot_order": 2}],
            "nics": [{"model": "virtio", "ip_v4_conf": {"conf": "dhcp"}}, {"model": "virtio"}],
        } for i, disk in zip(batch, disks, strict=True)]
        t0, c0 = time.perf_counter(), done.cpu()
        for k in range(0, len(bodies), per_request):
            done.uuids += [s["uuid"] for s in api.ok("POST", "servers/", {"objects": bodies[k:k + per_request]},
                                                     201)["objects"]]
        done.server_seconds += time.perf_counter() - t0
        done.server_cpu += done.cpu() - c0
        done.servers += len(bodies)
    return done


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("baseline server exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("baseline server did not answer")


# --- load ----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Result:
    def __init__(self, latencies: list[float], elapsed: float, size: int) -> None:
        self.latencies, self.elapsed, self.size = sorted(latencies), elapsed, size
        self.cpu = 0.0  # the server's CPU seconds during the measured requests

    @property
    def cpu_ms(self) -> float:
        """The server's CPU per request: what load on a shared machine does not change."""
        return self.cpu / len(self.latencies) * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def pct(self, p: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(p / 100 * len(self.latencies)))] * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000


async def load(url: str, auth: str | None, total: int, concurrency: int, warmup: int,
               extra: dict[str, str] | None = None, pid: int | None = None) -> Result:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    # identity: both servers send the same bytes (Strato gzips bodies over 1 KiB when asked; --gzip)
    headers = {"Accept-Encoding": "gzip, deflate" if GZIP else "identity", **({"Authorization": auth} if auth else {}),
               **(extra or {})}
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        size = 0

        async def get() -> float:
            nonlocal size
            started = time.perf_counter()
            async with session.get(url) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"GET {url}: {r.status} {body[:300]!r}")
            size = len(body)
            return time.perf_counter() - started

        async def worker(n: int, out: list[float]) -> None:
            for _ in range(n):
                out.append(await get())

        async def run(n: int) -> tuple[list[float], float]:
            out: list[float] = []
            per, extra = divmod(n, concurrency)
            started = time.perf_counter()
            await asyncio.gather(*(worker(per + (i < extra), out) for i in range(min(concurrency, n))))
            return out, time.perf_counter() - started

        await run(warmup)
        cpu = cpu_seconds(pid) if pid else 0.0
        latencies, elapsed = await run(total)
        result = Result(latencies, elapsed, size)
        result.cpu = cpu_seconds(pid) - cpu if pid else 0.0
        return result


# --- driver --------------------------------------------------------------------------------------


class Writer:
    """Changes one server ``rate`` times a second (PUT of its meta) from up to 32 threads, so a slow
    answer under load (on a busy node a PUT may take half a second) does not lower the rate."""

    def __init__(self, api, uuid: str, rate: float) -> None:  # type: ignore[no-untyped-def]
        import threading

        self.api, self.uuid, self.rate = api, uuid, rate
        self.done = self.sent = 0
        self.elapsed = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(32)]
        self._started = 0.0

    def _run(self) -> None:
        import requests

        session = requests.Session()
        session.auth = self.api.auth
        while not self._stop.is_set():
            with self._lock:
                n = self.sent
                self.sent += 1
            if (wait := self._started + n / self.rate - time.perf_counter()) > 0 and self._stop.wait(wait):
                return
            r = session.put(self.api.url(f"servers/{self.uuid}/"), json={"meta": {"tick": str(n)}}, timeout=60)
            assert r.status_code == 200, r.text[:300]
            with self._lock:
                self.done += 1

    def __enter__(self) -> Writer:
        self._started = time.perf_counter()
        if self.rate > 0:
            for thread in self._threads:
                thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.elapsed = time.perf_counter() - self._started
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(60)

    @property
    def achieved(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0


def start_bare(work: Path, single: bytes, listing: bytes) -> tuple[subprocess.Popen[bytes], int]:
    from tests.strato_process import free_port

    (work / "single.json").write_bytes(single)
    (work / "list.json").write_bytes(listing)
    port = free_port()
    bare = subprocess.Popen([sys.executable, __file__, "--bare", str(port), str(work)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    wait_port(port, bare)
    return bare, port


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="1000,10000", help="list sizes, comma-separated (the first is the bulk figure)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--lists", type=int, default=40)
    p.add_argument("--writes", type=float, default=50.0, help="server changes per second during the loads")
    p.add_argument("--one-by-one", type=int, default=100, help="servers then created one per request")
    p.add_argument("--pause", action="store_true", help="wait for Enter before loading (to attach a profiler)")
    p.add_argument("--db", help="database URL for Strato (default: SQLite in the temp dir)")
    p.add_argument("--postgresql", action="store_true", help="Strato on a throw-away PostgreSQL cluster")
    p.add_argument("--bare", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--gzip", action="store_true", help="ask for gzip (Strato compresses, the bare handler does not)")
    args = p.parse_args()
    global GZIP
    GZIP = args.gzip
    if args.bare:
        bare_main(int(args.bare[0]), Path(args.bare[1]))
        return 0

    import contextlib

    from tests.store.conftest import store_server, throwaway_postgres

    sizes = [int(n) for n in args.servers.split(",")]
    auth = "Basic " + base64.b64encode(f"{EMAIL}:{PASSWORD}".encode()).decode()
    no_cache = {"Cache-Control": "no-cache"}
    rows: dict[tuple[str, str], Result] = {}
    figures: list[tuple[str, str, str, bool | None]] = []  # figure, Strato, baseline, target met
    writes_done = 0.0
    with contextlib.ExitStack() as stack:
        db = args.db or (stack.enter_context(throwaway_postgres()) if args.postgresql else None)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="strato-bench-")))
        strato = store_server(work / "data", db)
        bares: list[subprocess.Popen[bytes]] = []
        try:
            api = strato.add_user(EMAIL, PASSWORD)
            strato.start()
            print(f"strato pid {strato.proc.pid if strato.proc else '?'} on {'PostgreSQL' if db else 'SQLite'}")
            done = Populated()
            done.pid = strato.proc.pid if strato.proc else None
            populate(api, 0, sizes[0], done)
            bulk = done.server_seconds
            print(f"store: {sizes[0]} servers in {sizes[0] // 100} bulk POSTs of 100: {bulk:.2f} s, server CPU "
                  f"{done.server_cpu:.2f} s (their drives, 100 per POST: {done.drive_seconds:.2f} s, CPU "
                  f"{done.drive_cpu:.2f} s)")
            figures.append((f"create {sizes[0]:,} servers, {sizes[0] // 100} bulk POSTs of 100",
                            f"{bulk:.2f} s (server CPU {done.server_cpu:.2f} s)", "< 3 s (target)",
                            bulk < 3 * sizes[0] / 1000))
            uuid = done.uuids[len(done.uuids) // 2]
            single_path, list_path = f"servers/{uuid}/", "servers/detail/?limit=0"
            listing = api.get(list_path)
            assert listing.json()["meta"]["total_count"] == sizes[0], listing.text[:300]
            bare, port = start_bare(work, api.get(single_path).content, listing.content)
            bares.append(bare)
            if args.pause:  # e.g. to attach a profiler: py-spy record --pid <strato pid>
                input(f"strato pid {strato.proc.pid if strato.proc else '?'}; press Enter to load it ")
            bare_base = f"http://127.0.0.1:{port}"
            strato_pid = strato.proc.pid if strato.proc else None
            with Writer(api, done.uuids[0], args.writes) as writer:
                for name, base, a, extra, pid in (("strato", strato.base, auth, no_cache, strato_pid),
                                                  ("bare", bare_base, None, None, bare.pid)):
                    rows["single", name] = asyncio.run(load(f"{base}/api/2.0/{single_path}", a, args.requests,
                                                            args.concurrency, warmup=200, extra=extra, pid=pid))
                    rows[f"list{sizes[0]}", name] = asyncio.run(load(f"{base}/api/2.0/{list_path}", a, args.lists,
                                                                     1, warmup=3, extra=extra, pid=pid))
            print(f"writer: {writer.done} server changes at {writer.achieved:.1f}/s during the loads")
            writes_done = writer.achieved
            for size in sizes[1:]:
                populate(api, done.servers, size, done)
                listing = api.get(list_path)
                assert listing.json()["meta"]["total_count"] == size, listing.text[:300]
                bare, port = start_bare(work, b"{}", listing.content)
                bares.append(bare)
                with Writer(api, done.uuids[0], args.writes) as writer:
                    for name, base, a, extra, pid in (("strato", strato.base, auth, no_cache, strato_pid),
                                                      ("bare", f"http://127.0.0.1:{port}", None, None, bare.pid)):
                        rows[f"list{size}", name] = asyncio.run(load(
                            f"{base}/api/2.0/{list_path}", a, max(5, args.lists // 4), 1, warmup=1, extra=extra,
                            pid=pid))
                print(f"writer: {writer.done} server changes at {writer.achieved:.1f}/s during the {size:,} list")
            singles = 0.0
            if args.one_by_one:
                before = done.server_seconds
                populate(api, done.servers, done.servers + args.one_by_one, done, per_request=1)
                singles = done.server_seconds - before
            # Bulk deletes: the first servers, 100 per DELETE (each server's rows in one transaction).
            gone, t0, c0 = done.uuids[:sizes[0]], time.perf_counter(), done.cpu()
            for k in range(0, len(gone), 100):
                r = api.delete("servers/", [{"uuid": u} for u in gone[k:k + 100]])
                assert r.status_code == 204, r.text[:300]
            deleting = time.perf_counter() - t0
            delete_figure = (f"delete {len(gone):,} servers, {len(gone) // 100} bulk DELETEs of 100",
                             f"{deleting:.2f} s (server CPU {done.cpu() - c0:.2f} s)", "—", None)
        finally:
            for bare in bares:
                bare.terminate()
                bare.wait(10)
            strato.stop()

    print()
    print(f"{'benchmark':<44} {'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'bytes':>9} {'CPU ms/req':>10}")
    labels = {"single": f"GET /servers/{{uuid}}/ c={args.concurrency} n={args.requests}",
              **{f"list{n}": f"GET /servers/detail/?limit=0 ({n:,}) c=1" for n in sizes}}
    for kind in labels:
        for name in ("strato", "bare"):
            r = rows[kind, name]
            print(f"{labels[kind]:<44} {name:<8} {r.rate:>9.1f} {r.p50:>8.2f} {r.pct(99):>8.2f} {r.size:>9} "
                  f"{r.cpu_ms:>10.3f}")
        s_, b = rows[kind, "strato"], rows[kind, "bare"]
        print(f"{'':<44} {'ratio':<8} {s_.rate / b.rate:>9.1%} {s_.p50 / b.p50:>7.1f}x {s_.pct(99) / b.pct(99):>7.1f}x "
              f"{'':>9} {b.cpu_ms / s_.cpu_ms if s_.cpu_ms else 0:>10.1%}")
    single, bare_single = rows["single", "strato"], rows["single", "bare"]
    if single.cpu_ms:  # the rate the node's CPU would allow on a core of its own, beside the bare one's
        figures.insert(0, ("GET /servers/{uuid}/, server CPU per request", f"{single.cpu_ms:.3f} ms "
                           f"({bare_single.cpu_ms / single.cpu_ms:.1%} of the bare rate per CPU)",
                           f"bare {bare_single.cpu_ms:.3f} ms", None))
    figures.insert(0, (f"GET /servers/{{uuid}}/, c={args.concurrency}, uncached",
                       f"{single.rate:,.0f} req/s ({single.rate / bare_single.rate:.1%}), p99 {single.pct(99):.1f} ms",
                       f"bare {bare_single.rate:,.0f} req/s; target >= 20%, p99 < 20 ms",
                       single.rate >= 0.2 * bare_single.rate and single.pct(99) < 20))
    for n in sizes:
        r, b = rows[f"list{n}", "strato"], rows[f"list{n}", "bare"]
        limit = 40 * n / 1000
        figures.insert(len(figures) - 1, (f"GET /servers/detail/?limit=0, {n:,} servers, uncached",
                                          f"p50 {r.p50:.1f} ms", f"bare {b.p50:.1f} ms; target < {limit:.0f} ms",
                                          r.p50 < limit))
    figures.append((f"server changes/s during the {sizes[0]:,} loads", f"{writes_done:.1f}/s",
                    f"asked {args.writes:g}/s", writes_done >= 0.9 * args.writes))
    figures.append(delete_figure)
    if args.one_by_one:
        figures.append((f"{args.one_by_one} servers one per request", f"{args.one_by_one / singles:.1f}/s",
                        "—", None))
    print()
    print(f"figures ({'PostgreSQL' if db else 'SQLite'}; every baseline measured in this run; "
          f"{args.writes:g} server changes/s during the loads)")
    for figure, value, baseline, met in figures:
        verdict = "" if met is None else ("MET" if met else "MISSED")
        print(f"  {figure:<52} {value:<36} {baseline:<44} {verdict}")
    return 0 if all(met is not False for *_, met in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
