"""Clone a 1 GiB drive full of data through Strato: copy-on-write against the full copy.

One API node and one data directory; the same uploaded drive (random bytes throughout, so
nothing is skipped as zeros) is cloned with ``clone_mode = "copy"`` (the old path: libvirt copies
the whole volume while the source is ``cloning_src``), then, after a restart of the node, with
``clone_mode = "cow"``. For each clone: seconds from the request until the clone is ``unmounted``
and its source free to start, as a polling client sees them; for copy-on-write also until the
background flatten made both volumes standalone again (not a wait of anyone's). Beside them, by
hand on the same volume file: ``qemu-img convert -O qcow2`` and ``cp --sparse=always``.

    .venv/bin/python bench/clone.py [--runs 3] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.strato_process import Api, StratoServer, wait_for  # noqa: E402

MiB = 2**20


def make_image(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))


def upload_file(api: Api, path: Path) -> str:
    with path.open("rb") as f:  # the answer comes once the image is imported: a long wait
        r = requests.post(api.url("drives/upload/bench.img/"), data=f, auth=api.auth, timeout=1800,
                          headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    uuid = r.text.strip()
    wait_for(lambda: api.ok("GET", f"drives/{uuid}/")["status"] == "unmounted", 600, "the upload")
    return uuid


def backing(path: Path) -> str | None:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out).get("backing-filename")


def clone_once(api: Api, source: str, pool: Path, n: int) -> tuple[float, float, float | None]:
    """(seconds to the clone unmounted, to the source free, to both flattened or None)."""
    start = time.perf_counter()
    clone = api.ok("POST", f"drives/{source}/action/?do=clone", {"name": f"bench-{n}"}, 202)["objects"][0]
    uuid = clone["uuid"]
    status = clone["status"]
    usable = time.perf_counter() - start if status == "unmounted" else None
    while usable is None:
        if api.ok("GET", f"drives/{uuid}/")["status"] == "unmounted":
            usable = time.perf_counter() - start
        else:
            time.sleep(0.05)
    while api.ok("GET", f"drives/{source}/")["status"] != "unmounted":
        time.sleep(0.05)
    free = time.perf_counter() - start
    flat = None
    if backing(pool / f"{uuid}.qcow2") is not None or backing(pool / f"{source}.qcow2") is not None:
        wait_for(lambda: backing(pool / f"{uuid}.qcow2") is None and backing(pool / f"{source}.qcow2") is None
                 and not any(p.name.startswith("base-") for p in pool.iterdir()), 1800, "the flatten", 0.1)
        flat = time.perf_counter() - start
    assert api.delete(f"drives/{uuid}/").status_code == 204
    wait_for(lambda: not (pool / f"{uuid}.qcow2").exists(), 120, "the clone's volume deleted", 0.1)
    return usable, free, flat


def by_hand(volume: Path, scratch: Path) -> tuple[float, float]:
    target = scratch / "hand.qcow2"
    start = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", str(volume), str(target)], check=True)
    convert = time.perf_counter() - start
    target.unlink()
    start = time.perf_counter()
    subprocess.run(["cp", "--sparse=always", str(volume), str(target)], check=True)
    cp = time.perf_counter() - start
    target.unlink()
    return convert, cp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="strato-bench-clone-", dir="/var/tmp"))
    root.chmod(0o755)
    server = StratoServer(root / "data", extra_env={"STRATO_CLONE_MODE": "copy"})
    try:
        server.data_dir.mkdir()
        server.data_dir.chmod(0o755)
        api = server.add_user("bench@example.com", "bench-pw")
        server.start()
        server.wait_host_up()
        image = root / "data.img"
        make_image(image, args.size_mib * MiB)
        source = upload_file(api, image)
        image.unlink()
        pool = server.data_dir / "pools" / "local"
        allocated = (pool / f"{source}.qcow2").stat().st_blocks * 512
        results: dict[str, list[tuple[float, float, float | None]]] = {"copy": [], "cow": []}
        hand: list[tuple[float, float]] = []
        for mode in ("copy", "cow"):
            if mode == "cow":  # the same node and drive, restarted with the other clone path
                server.proc.terminate()  # type: ignore[union-attr]
                server.proc.wait(30)  # type: ignore[union-attr]
                server.env["STRATO_CLONE_MODE"] = mode
                server.start()
                server.wait_host_up()
            for n in range(args.runs):
                results[mode].append(clone_once(api, source, pool, n))
                if mode == "copy":
                    hand.append(by_hand(pool / f"{source}.qcow2", root))
        print(f"clone of a {args.size_mib} MiB drive of random data ({allocated / MiB:.0f} MiB allocated), "
              f"{args.runs} runs each, medians:")
        for mode, label in (("copy", "full copy (clone_mode=copy)"), ("cow", "copy-on-write (clone_mode=cow)")):
            rows = results[mode]
            usable = statistics.median(r[0] for r in rows)
            free = statistics.median(r[1] for r in rows)
            line = f"  {label:32s} clone unmounted {usable:7.3f} s   source free {free:7.3f} s"
            flats = [r[2] for r in rows if r[2] is not None]
            if flats:
                line += f"   (background flatten of both done after {statistics.median(flats):.1f} s)"
            print(line)
        print(f"  {'by hand: qemu-img convert':32s} {statistics.median(h[0] for h in hand):7.3f} s")
        print(f"  {'by hand: cp --sparse=always':32s} {statistics.median(h[1] for h in hand):7.3f} s")
        copy_usable = statistics.median(r[0] for r in results["copy"])
        cow_usable = statistics.median(r[0] for r in results["cow"])
        print(f"  copy-on-write clone usable {copy_usable / cow_usable:.0f}x sooner than the full copy")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
