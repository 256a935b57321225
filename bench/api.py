"""API node benchmark: Strato beside a bare aiohttp handler serving the same JSON, in one run.

    .venv/bin/python bench/api.py [--servers 1000] [--requests 2000] [--concurrency 32] [--lists 40]

* ``GET /servers/{uuid}/`` at concurrency 32 (target: at least 50% of the bare handler's rate);
* ``GET /servers/detail/?limit=0`` with 1,000 servers, sequential (target: p50 under 100 ms).

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


def populate(api, count: int) -> str:  # type: ignore[no-untyped-def]
    """``count`` servers, each with a disk, a shared cdrom, two NICs, meta and two tags."""
    tags = api.ok("POST", "tags/", {"objects": [{"name": "web", "meta": {"team": "blue"}}, {"name": "prod"}]},
                  201)["objects"]
    cdrom = api.ok("POST", "drives/", {"objects": [{"name": "install-iso", "size": GiB, "media": "cdrom",
                                                     "allow_multimount": True}]}, 201)["objects"][0]
    uuids: list[str] = []
    for start in range(0, count, 100):
        batch = range(start, min(start + 100, count))
        disks = api.ok("POST", "drives/", {"objects": [
            {"name": f"disk-{i}", "size": 20 * GiB, "media": "disk", "meta": {"os": "debian"}} for i in batch]},
            201)["objects"]
        servers = api.ok("POST", "servers/", {"objects": [{
            "name": f"server-{i:04d}", "cpu": 2000, "mem": 2 * GiB, "vnc_password": "secret-vnc",
            "meta": {"description": f"web node {i}", "ssh_public_key": "ssh-ed25519 AAAAC3Nza" + "x" * 60,
                     "env": "prod"},
            "tags": [t["uuid"] for t in tags],
            "drives": [{"drive": disk["uuid"], "device": "virtio", "dev_channel": "0:0", "boot_order": 1},
                       {"drive": cdrom["uuid"], "device": "ide", "dev_channel": "0:0", "boot_order": 2}],
            "nics": [{"model": "virtio", "ip_v4_conf": {"conf": "dhcp"}}, {"model": "virtio"}],
        } for i, disk in zip(batch, disks, strict=True)]}, 201)["objects"]
        uuids += [s["uuid"] for s in servers]
    return uuids[len(uuids) // 2]


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


class Result:
    def __init__(self, latencies: list[float], elapsed: float, size: int) -> None:
        self.latencies, self.elapsed, self.size = sorted(latencies), elapsed, size

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def pct(self, p: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(p / 100 * len(self.latencies)))] * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000


async def load(url: str, auth: str | None, total: int, concurrency: int, warmup: int,
               extra: dict[str, str] | None = None) -> Result:
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
        latencies, elapsed = await run(total)
        return Result(latencies, elapsed, size)


# --- driver --------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, default=1000)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--lists", type=int, default=40)
    p.add_argument("--pause", action="store_true", help="wait for Enter before loading (to attach a profiler)")
    p.add_argument("--db", help="database URL for Strato (default: SQLite in the temp dir)")
    p.add_argument("--bare", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--gzip", action="store_true", help="ask for gzip (Strato compresses, the bare handler does not)")
    args = p.parse_args()
    global GZIP
    GZIP = args.gzip
    if args.bare:
        bare_main(int(args.bare[0]), Path(args.bare[1]))
        return 0

    from tests.store.conftest import store_server
    from tests.strato_process import free_port

    with tempfile.TemporaryDirectory(prefix="strato-bench-") as tmp:
        work = Path(tmp)
        strato = store_server(work / "data", args.db)
        bare = None
        try:
            api = strato.add_user(EMAIL, PASSWORD)
            strato.start()
            started = time.perf_counter()
            uuid = populate(api, args.servers)
            print(f"store: {args.servers} servers created in {time.perf_counter() - started:.1f} s "
                  f"(pid {strato.proc.pid if strato.proc else '?'})")
            single_path, list_path = f"servers/{uuid}/", "servers/detail/?limit=0"
            (work / "single.json").write_bytes(api.get(single_path).content)
            listing = api.get(list_path)
            assert listing.json()["meta"]["total_count"] == args.servers, listing.text[:300]
            (work / "list.json").write_bytes(listing.content)

            port = free_port()
            bare = subprocess.Popen([sys.executable, __file__, "--bare", str(port), str(work)], cwd=ROOT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
            wait_port(port, bare)

            auth = "Basic " + base64.b64encode(f"{EMAIL}:{PASSWORD}".encode()).decode()
            if args.pause:  # e.g. to attach a profiler: py-spy record --pid <strato pid>
                input(f"strato pid {strato.proc.pid if strato.proc else '?'}; press Enter to load it ")
            # "uncached": Cache-Control: no-cache makes Strato render from the database every time.
            no_cache = {"Cache-Control": "no-cache"}
            targets = {"strato": (strato.base, auth, None), "uncached": (strato.base, auth, no_cache),
                       "bare": (f"http://127.0.0.1:{port}", None, None)}
            rows: dict[tuple[str, str], Result] = {}
            for name, (base, a, extra) in targets.items():
                rows["single", name] = asyncio.run(load(f"{base}/api/2.0/{single_path}", a, args.requests,
                                                        args.concurrency, warmup=200, extra=extra))
                rows["list", name] = asyncio.run(load(f"{base}/api/2.0/{list_path}", a, args.lists, 1, warmup=3,
                                                      extra=extra))
        finally:
            if bare is not None:
                bare.terminate()
                bare.wait(10)
            strato.stop()

    print()
    print(f"{'benchmark':<40} {'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'bytes':>9}")
    labels = {"single": f"GET /servers/{{uuid}}/ c={args.concurrency} n={args.requests}",
              "list": f"GET /servers/detail/?limit=0 c=1 n={args.lists}"}
    for kind in ("single", "list"):
        for name in ("strato", "uncached", "bare"):
            r = rows[kind, name]
            print(f"{labels[kind]:<40} {name:<8} {r.rate:>9.1f} {r.p50:>8.2f} {r.pct(99):>8.2f} {r.size:>9}")
        b = rows[kind, "bare"]
        for name in ("strato", "uncached"):
            s = rows[kind, name]
            print(f"{'':<40} {'ratio':<8} {s.rate / b.rate:>9.1%} {s.p50 / b.p50:>7.1f}x "
                  f"{s.pct(99) / b.pct(99):>7.1f}x  ({name} / bare)")
    single_ratio = rows["single", "strato"].rate / rows["single", "bare"].rate
    list_p50 = rows["list", "strato"].p50
    ok_single, ok_list = single_ratio >= 0.5, list_p50 < 100
    print()
    print(f"target single GET >= 50% of bare rate: {single_ratio:.1%}  {'MET' if ok_single else 'MISSED'}")
    print(f"target detail list (1,000) p50 < 100 ms: {list_p50:.1f} ms  {'MET' if ok_list else 'MISSED'}")
    return 0 if ok_single and ok_list else 1


if __name__ == "__main__":
    sys.exit(main())
