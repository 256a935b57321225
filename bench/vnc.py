"""VNC console benchmark: the vnc:// TCP tunnel and the noVNC WebSocket beside the guest's own VNC port.

    .venv/bin/python bench/vnc.py [--rounds 5] [--frames 40] [--pings 100]

Target (issue "VNC consoles"): through the tunnel and through the WebSocket, at least 90% of the
direct connection's throughput and less than 1 ms added p50 latency.

One real ``strato serve`` (its local host on this machine's libvirtd, domain type qemu) runs the
test guest (``build/guest/strato-guest.img``, booted to STRATO-READY, so its VGA text screen is
still).  Three RFB sessions, all authenticated with VNC authentication and raw encoding, in this
process:

* direct    — the guest's VNC display as libvirt reports it (``virsh domdisplay``);
* tunnel    — the ``vnc://`` URL of ``open_vnc`` (the API node's TCP proxy);
* websocket — ``ws://…/console/websockify?token=…`` from ``console_page_url``, binary frames.

Measured in interleaved rounds (every path in every round, so drift hits all three alike):

* throughput — sequential full (non-incremental) FramebufferUpdateRequests of the whole screen
  (raw, 720×400×4 bytes): bytes of each FramebufferUpdate / time from its first to its last byte.
  QEMU answers such a request only at its next display refresh (an idle screen backs the timer off
  to ~100–200 ms), so request → last byte ("paced") mostly measures QEMU's timer, and is shown
  beside it; the first → last byte rate is what the path itself carries;
* latency — a SetEncodings with QEMU's LED-state pseudo-encoding, which QEMU answers at once
  (17 bytes): request → first byte of the answer, i.e. the round trip through each path.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.consoles.conftest import VNC_PASSWORD, Guest, guest_node  # noqa: E402
from tests.consoles.rfb import RfbClient, TcpStream, WsStream  # noqa: E402

PATHS = ("direct", "tunnel", "websocket")


async def connect(guest: Guest, path: str) -> RfbClient:
    if path == "direct":
        host, port = guest.direct_vnc()
        stream = await TcpStream.connect(host, port)
    elif path == "tunnel":
        url = urlparse(guest.open("open_vnc")["vnc_url"])
        assert url.hostname and url.port
        stream = await TcpStream.connect(url.hostname, url.port)
    else:
        page = urlparse(guest.open("open_vnc")["console_page_url"])
        stream = await WsStream.connect(f"ws://{page.netloc}/{parse_qs(page.query)['path'][0]}", guest.origin)
    client = RfbClient(stream)
    await client.handshake(VNC_PASSWORD)
    return client


async def frames(client: RfbClient, n: int) -> tuple[int, float, float]:
    """Bytes, seconds from first to last byte, and seconds from request to last byte of n sequential
    full-screen updates."""
    total, transfer, elapsed = 0, 0.0, 0.0
    for _ in range(n):
        sent = time.perf_counter()
        update = await client.full_frame()
        transfer += update.done - update.first_byte
        elapsed += update.done - sent
        total += update.nbytes
    return total, transfer, elapsed


async def pings(client: RfbClient, n: int) -> list[float]:
    """Request → first byte of QEMU's immediate LED-state answer, in seconds."""
    out = []
    for _ in range(n):
        sent = time.perf_counter()
        update = await client.led_ping()
        out.append(update.first_byte - sent)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(guest: Guest, rounds: int, n_frames: int, n_pings: int) -> dict[str, dict[str, float]]:
    clients = {p: await connect(guest, p) for p in PATHS}
    try:
        for client in clients.values():  # warm-up
            await frames(client, 3)
            await pings(client, 10)
        size = {p: 0 for p in PATHS}
        transfer = {p: 0.0 for p in PATHS}
        elapsed = {p: 0.0 for p in PATHS}
        lat: dict[str, list[float]] = {p: [] for p in PATHS}
        for r in range(rounds):
            order = PATHS[r % 3:] + PATHS[:r % 3]
            for p in order:
                b, t, e = await frames(clients[p], n_frames)
                size[p] += b
                transfer[p] += t
                elapsed[p] += e
                lat[p] += await pings(clients[p], n_pings)
        frame_bytes = size["direct"] // (rounds * n_frames)
        result = {}
        for p in PATHS:
            result[p] = {"mbps": size[p] / transfer[p] / 1e6, "fps": rounds * n_frames / elapsed[p],
                         "paced": size[p] / elapsed[p] / 1e6,
                         "p50": pct(lat[p], 0.5) * 1e3, "p90": pct(lat[p], 0.9) * 1e3,
                         "p99": pct(lat[p], 0.99) * 1e3, "frame": frame_bytes, "samples": len(lat[p])}
        return result
    finally:
        for client in clients.values():
            await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=40, help="full-screen updates per path per round")
    parser.add_argument("--pings", type=int, default=100, help="latency samples per path per round")
    args = parser.parse_args()

    print("Starting an API node and booting the test guest (TCG) …", flush=True)
    nodes = guest_node()
    guest = next(nodes)
    try:
        host, port = guest.direct_vnc()
        print(f"guest {guest.uuid}: direct VNC {host}:{port}; {args.rounds} rounds × "
              f"({args.frames} full frames + {args.pings} pings) per path\n", flush=True)
        result = asyncio.run(run(guest, args.rounds, args.frames, args.pings))
    finally:
        for _ in nodes:
            pass

    direct = result["direct"]
    print(f"full frame: {direct['frame']:,} bytes (raw, 32 bpp); latency samples per path: {direct['samples']}")
    print("MB/s = full-frame bytes / first→last byte; paced = request→last byte (QEMU's refresh timer included);")
    print("latency = SetEncodings(LED state) → first byte of QEMU's immediate answer\n")
    print(f"{'path':<10} {'MB/s':>8} {'vs direct':>10} {'paced MB/s':>11} {'frames/s':>9} {'p50 ms':>8} "
          f"{'p90 ms':>8} {'p99 ms':>8} {'added p50':>10}  verdict")
    ok = True
    for p in PATHS:
        r = result[p]
        ratio = r["mbps"] / direct["mbps"]
        added = r["p50"] - direct["p50"]
        if p == "direct":
            verdict = "baseline"
        else:
            good = ratio >= 0.90 and added < 1.0
            ok &= good
            verdict = ("PASS" if good else "FAIL") + f" (≥90%: {'yes' if ratio >= 0.9 else 'no'}, " \
                f"<1 ms: {'yes' if added < 1.0 else 'no'})"
        print(f"{p:<10} {r['mbps']:>8.1f} {ratio:>10.1%} {r['paced']:>11.1f} {r['fps']:>9.1f} {r['p50']:>8.3f} "
              f"{r['p90']:>8.3f} {r['p99']:>8.3f} {added:>+9.3f}ms  {verdict}")
    print(f"\nTarget ≥ 90% of direct throughput and < 1 ms added p50 latency: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
