"""Time `domain.start` through the agent against `virsh create` of the identical XML.

For each run: the agent's `domain.start` (request sent → libvirt reports RUNNING), then the
domain is destroyed and undefined, then `virsh create` of the XML `domain.render` gave for the
same server (process start → RUNNING), destroyed again. Runs alternate so drift hits both.
Prints both medians and their ratio (target ≤ 1.10).

    .venv/bin/python bench/agent_start.py [--runs 5] [--virt-type qemu]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import libvirt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.client import AgentClient  # noqa: E402

URI = "qemu:///system"
GUEST_IMAGE = ROOT / "build" / "guest" / "strato-guest.img"


async def wait_running(conn: libvirt.virConnect, name: str, since: float) -> float:
    while True:
        try:
            if conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                return time.perf_counter() - since
        except libvirt.libvirtError:
            pass
        await asyncio.sleep(0.001)


def destroy(conn: libvirt.virConnect, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    persistent = dom.isPersistent()  # a transient domain is gone once destroyed
    if dom.isActive():
        dom.destroy()
    if persistent:
        dom.undefine()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--virt-type", default="qemu")
    args = parser.parse_args()

    prefix = f"bench{secrets.token_hex(2)}-"
    base = Path(tempfile.mkdtemp(prefix="strato-bench-", dir="/var/tmp"))
    base.chmod(0o755)
    pool = base / "pool"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents.cli", "--stdio", "--uri", URI, "--virt-type", args.virt_type,
        "--prefix", prefix, "--pool", f"default={pool}", "--console-log-dir", str(base / "console"),
        "--socket-dir", str(base / "s"), "--log-level", "WARNING",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    client = AgentClient(proc.stdout, proc.stdin)
    conn = libvirt.open(URI)
    agent_times: list[float] = []
    virsh_times: list[float] = []
    try:
        await client.call("volume.import", name="boot", source_path=str(GUEST_IMAGE), timeout=120)
        for run in range(args.runs):
            server = {
                "uuid": str(uuid.uuid4()), "name": f"bench {run}", "cpu": 1000, "mem": 128 << 20, "smp": 1,
                "cpus_instead_of_cores": False, "enable_numa": False, "hv_relaxed": False, "hv_tsc": False,
                "cpu_model": None, "vnc_password": "benchpass", "context": False,
                "drives": [{"uuid": str(uuid.uuid4()), "pool": None, "volume": "boot", "media": "disk",
                            "device": "virtio", "dev_channel": "0:0", "boot_order": 1}],
                "nics": [],
            }
            name = prefix + server["uuid"]
            xml_path = base / f"{run}.xml"
            xml_path.write_text((await client.call("domain.render", server=server))["xml"])

            start = time.perf_counter()
            await client.call("domain.start", server=server, timeout=60)
            agent_times.append(await wait_running(conn, name, start))
            destroy(conn, name)

            start = time.perf_counter()
            virsh = await asyncio.create_subprocess_exec(
                "virsh", "-q", "-c", URI, "create", str(xml_path), stdout=asyncio.subprocess.DEVNULL)
            assert await virsh.wait() == 0
            virsh_times.append(await wait_running(conn, name, start))
            destroy(conn, name)
            print(f"run {run}: agent {agent_times[-1] * 1000:.0f} ms, virsh create {virsh_times[-1] * 1000:.0f} ms")
    finally:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(prefix):
                destroy(conn, dom.name())
        proc.stdin.close()
        await proc.wait()
        for p in conn.listAllStoragePools(0):
            if p.name().startswith(prefix):
                for vol in p.listAllVolumes(0):
                    vol.delete(0)
                p.destroy()
                p.undefine()
        conn.close()
        shutil.rmtree(base, ignore_errors=True)
    agent = statistics.median(agent_times)
    virsh_med = statistics.median(virsh_times)
    print(f"median agent domain.start: {agent * 1000:.0f} ms")
    print(f"median virsh create:       {virsh_med * 1000:.0f} ms")
    print(f"ratio agent / virsh:       {agent / virsh_med:.2f} (target <= 1.10)")


if __name__ == "__main__":
    asyncio.run(main())
