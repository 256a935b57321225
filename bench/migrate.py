"""Live migration benchmark: ``strato servers migrate`` beside ``virsh migrate`` of the same guest
between the same two real hosts (tests/hosts/harness.py), in one run.

    .venv/bin/python bench/migrate.py [--rounds 3]

Target (issue 12): Strato's migration time ≤ 1.10× virsh's, guest downtime within 10 % of virsh's.

One ``strato serve`` with two hosts reached over SSH, each its own libvirtd in its own namespaces;
the test guest (128 MiB, TCG) on the shared pool, printing ``STRATO-TICK n`` every 0.1 s on its
serial console (meta.counter "on").  Each round moves it there and back through Strato, then there
and back with ``virsh migrate --live --p2p --persistent --undefinesource --unsafe`` run on the
source host (the same flags and URIs the agent uses; ``--xml`` the live definition with the target's
console log and socket paths, as the agent's; ``--dname`` the name the target's agent expects, so
Strato still finds it afterwards).

* time, virsh — the ``virsh migrate`` command, start to exit;
* time, strato — ``strato servers migrate`` (the command line: queue the job, the API node picks
  it up, prepares the target, migrates, records; the command sees the job end), start to exit;
  "job" is the part the API node spends (job created → finished), then what the command spends
  outside it (start-up until the job row exists, the job's end until the command exited) and
  the job's phases as the API node logs them;
* downtime — host-side: each console log is polled every 5 ms and each tick number stamped when
  first seen; the largest gap between consecutive ticks during the move, minus the 0.1 s period,
  is how long the guest did not run (the guest's own clock stops while it is paused, so its uptime
  cannot show it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hosts.harness import make_hosts
from tests.strato_process import ROOT, StratoServer, upload, wait_for

TICK = re.compile(rb"STRATO-TICK (\d+) ")
PERIOD = 0.1
PHASES = re.compile(r"prepared in ([\d.]+) s, migrated in ([\d.]+) s, recorded in ([\d.]+) s")


class Ticks:
    """When each tick number first showed in any of the watched console logs (host monotonic)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.seen = paths, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for path in self.paths:
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                for n in TICK.findall(data):
                    self.seen.setdefault(int(n), now)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def downtime(self, start: float, end: float) -> float:
        stamps = sorted(t for t in self.seen.values() if start - 1 <= t <= end + 1)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        return max(gaps, default=0.0) - PERIOD


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    hosts = make_hosts(2)
    data = Path(hosts.root) / "api"
    server = StratoServer(data, extra_env={"STRATO_LOCAL_HOST": "false", "STRATO_HEARTBEAT": "1",
                                           "STRATO_STORAGE_POOLS": json.dumps({"zadara": "shared"})})
    try:
        data.mkdir()
        api = server.add_user("bench@example.com", "bench-pw")
        hosts.register(server.cli)
        server.start()
        wait_for(lambda: all(h["state"] == "up" for h in json.loads(server.cli("hosts", "list"))), 90, "hosts up")
        image = upload(api, "guest.img", (ROOT / "build" / "guest" / "strato-guest.img").read_bytes())
        drive = api.ok("POST", f"drives/{image}/action/?do=clone", {"name": "bench", "storage_type": "zadara"},
                       202)["objects"][0]["uuid"]
        wait_for(lambda: api.ok("GET", f"drives/{drive}/")["status"] == "unmounted", 120, "clone")
        uuid = api.ok("POST", "servers/", {"name": "bench", "cpu": 1000, "mem": 128 << 20, "vnc_password": "secret12",
                                           "meta": {"counter": "on"}, "drives": [
                                               {"drive": drive, "device": "virtio", "dev_channel": "0:0",
                                                "boot_order": 1}]}, 201)["objects"][0]["uuid"]
        assert api.post(f"servers/{uuid}/action/?do=start").status_code == 202
        wait_for(lambda: api.ok("GET", f"servers/{uuid}/")["status"] == "running", 120, "running")
        home = next(h for h in hosts.hosts if (h.console_log(h.prefix + uuid)).exists())
        away = next(h for h in hosts.hosts if h is not home)
        ticks = Ticks([h.console_log(h.prefix + uuid) for h in hosts.hosts])
        wait_for(lambda: len(ticks.seen) > 30, 120, "the guest's counter")
        env = {**os.environ, **server.env}
        results: dict[str, list[tuple[float, float, float | None]]] = {"strato": [], "virsh": []}

        around: list[tuple[float, float]] = []  # the command's time before its job was made, after it ended

        def strato(to: str) -> None:
            t0, w0 = time.monotonic(), time.time()
            out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "servers", "migrate", uuid, "--to", to,
                                  "--data-dir", str(data)], capture_output=True, text=True, env=env, cwd=ROOT)
            t1, w1 = time.monotonic(), time.time()
            result = json.loads(out.stdout)
            assert result["state"] == "success", result
            job = api.ok("GET", f"jobs/{result['job']}/")
            created, ended = _seconds(job["created"]), _seconds(job["last_modified"])
            job_time = ended - created
            around.append((created - w0, w1 - ended))
            time.sleep(1.0)
            results["strato"].append((t1 - t0, ticks.downtime(t0, t1), job_time))

        def virsh(source, target) -> None:  # type: ignore[no-untyped-def]
            # As the agent does (agents/migration.py): the destination definition is the live one with
            # the target's paths (console log, serial sockets) and name, so each host's virtlogd writes
            # its own log, and the ticks of both hosts are seen apart.
            live = subprocess.run(source.inside("virsh", "dumpxml", "--migratable", "--security-info",
                                                source.prefix + uuid), check=True, capture_output=True, text=True)
            dest = Path(hosts.root) / "virsh-destination.xml"
            # (its <name> stays the source's: libvirt insists; --dname renames.)
            dest.write_text(live.stdout.replace(str(source.console_log(source.prefix + uuid)),
                                                str(target.console_log(target.prefix + uuid)))
                            .replace(f"{source.root}/", f"{target.root}/"))
            t0 = time.monotonic()
            out = subprocess.run(source.inside("virsh", "migrate", "--live", "--p2p", "--persistent",
                                               "--undefinesource", "--unsafe", "--xml", str(dest), "--dname",
                                               target.prefix + uuid, source.prefix + uuid, target.migration_uri,
                                               f"tcp://{target.address}"), capture_output=True, text=True)
            t1 = time.monotonic()
            assert out.returncode == 0, out.stderr
            time.sleep(1.0)
            results["virsh"].append((t1 - t0, ticks.downtime(t0, t1), None))

        for _ in range(args.rounds):
            strato(away.name)
            strato(home.name)
            virsh(home, away)
            virsh(away, home)
        ticks.stop()
        print(f"live migration of a 128 MiB TCG guest on a shared pool, {args.rounds * 2} moves each "
              "(median, min–max)")
        base_time = statistics.median(r[0] for r in results["virsh"])
        base_down = statistics.median(r[1] for r in results["virsh"])
        for name, rows in results.items():
            times, downs = [r[0] for r in rows], [r[1] for r in rows]
            time_, down = statistics.median(times), statistics.median(downs)
            line = (f"{name:7} time {time_:6.2f} s ({min(times):.2f}–{max(times):.2f})  {time_ / base_time:5.2f}× virsh"
                    f"   downtime {down * 1000:6.0f} ms ({min(downs) * 1000:.0f}–{max(downs) * 1000:.0f})  "
                    f"{down / base_down:5.2f}× virsh")
            if rows[0][2] is not None:
                jobs = [r[2] for r in rows]
                line += f"   job {statistics.median(jobs):.2f} s"
            print(line)
        print("command outside its job (median): start-up to the job queued "
              f"{statistics.median(a for a, _ in around):.2f} s, job ended to exit "
              f"{statistics.median(b for _, b in around):.2f} s")
        phases = [tuple(map(float, m)) for m in PHASES.findall(server.log.read_text())]
        if phases:  # where the API node's job spends its time (work/migrations.py logs each move)
            print("job phases (median): " + ", ".join(
                f"{name} {statistics.median(p[i] for p in phases):.2f} s"
                for i, name in enumerate(("prepare", "migrate", "record"))))
        api.post(f"servers/{uuid}/action/?do=stop")
    finally:
        server.stop()
        hosts.close()


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    main()
