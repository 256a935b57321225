"""Three hosts on this machine for the orchestration tests: one local agent, two over a real sshd.

All three agents share this machine's libvirtd, each with its own domain/pool name prefix and
its own pool directory, plus a ``shared`` pool: one directory that every host sees (as an NFS
mount would be).  libvirt refuses two ``dir`` pools with the same target path, so each host
mounts it through its own symlink; agents report a pool's real path, which is what tells the
scheduler that the three hosts see the same directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests.strato_process import ROOT, Api, StratoServer, free_port, remove_libvirt_objects, wait_for

SERVERS_PER_HOST = 6          # capacity the tests configure: 6 servers of SERVER_CPU MHz per host
SERVER_CPU = 1000
MiB = 1024 * 1024
SHUTDOWN_WINDOW = 5


@dataclass
class HostInfo:
    name: str
    prefix: str
    pool_dir: Path
    shared_link: Path
    console_dir: Path
    socket_dir: Path
    ssh: bool

    def agent_command(self) -> str:
        return (f"env PYTHONPATH={ROOT} {sys.executable} -m agents.cli --stdio --prefix {self.prefix} "
                f"--pool default={self.pool_dir} --pool shared={self.shared_link} --virt-type qemu "
                f"--console-log-dir {self.console_dir} --socket-dir {self.socket_dir}")

    def console_log(self, uuid: str) -> Path:
        return self.console_dir / f"{self.prefix}{uuid}.log"


@dataclass
class Sshd:
    port: int
    config: Path
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                                     stdout=subprocess.DEVNULL,
                                     stderr=(self.config.parent / "sshd.log").open("ab"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.config.parent / 'sshd.log').read_text()}")
            probe = subprocess.run(["ssh", "-p", str(self.port), "-i", str(self.client_key), "-o", "BatchMode=yes",
                                    "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                                    "root@127.0.0.1", "true"], capture_output=True)
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("sshd did not accept the test key")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_sshd(root: Path) -> Sshd:
    d = root / "ssh"
    d.mkdir()
    port = free_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = d / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PermitRootLogin prohibit-password", "StrictModes no",
        "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "Subsystem sftp internal-sftp", "MaxStartups 100", "LogLevel VERBOSE", ""]))
    return Sshd(port, config, d / "client_key", d / "known_hosts")


@dataclass
class Cluster:
    root: Path
    server: StratoServer
    sshd: Sshd
    hosts: dict[str, HostInfo]
    shared_dir: Path
    api: Api
    cpu_capacity: float   # MHz per host, after overcommit
    mem_capacity: float   # bytes per host

    def hosts_list(self) -> dict[str, dict]:
        return {h["name"]: h for h in json.loads(self.server.cli("hosts", "list"))}

    def wait_hosts_up(self, timeout: float = 60) -> None:
        wait_for(lambda: all(h["state"] == "up" for h in self.hosts_list().values()), timeout, "hosts up")

    def volume_files(self, drive_uuid: str) -> list[Path]:
        """Where the drive's volume file is: host pool directories and the shared one."""
        dirs = [h.pool_dir for h in self.hosts.values()] + [self.shared_dir]
        return [d / f"{drive_uuid}.qcow2" for d in dirs if (d / f"{drive_uuid}.qcow2").exists()]

    def host_of_volume(self, drive_uuid: str) -> str:
        names = [h.name for h in self.hosts.values() if (h.pool_dir / f"{drive_uuid}.qcow2").exists()]
        assert len(names) == 1, f"volume of {drive_uuid} in {names}"
        return names[0]



def host_mhz() -> int:
    conn = libvirt.open("qemu:///system")
    try:
        return conn.getInfo()[3] * conn.getInfo()[2]  # MHz per core × cores
    finally:
        conn.close()


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="strato-cloud-", dir="/var/tmp"))
    root.chmod(0o755)
    shared = root / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    server_mhz = host_mhz()
    # Room for SERVERS_PER_HOST servers (and a half) of SERVER_CPU MHz on each host.
    overcommit = (SERVERS_PER_HOST + 0.5) * SERVER_CPU / server_mhz
    server = StratoServer(root / "data", extra_env={
        "STRATO_LOCAL_HOST": "false", "STRATO_CPU_OVERCOMMIT": json.dumps(overcommit),
        "STRATO_SHUTDOWN_WINDOW": str(SHUTDOWN_WINDOW), "STRATO_HEARTBEAT": "1",
        "STRATO_STORAGE_POOLS": json.dumps({"zadara": "shared"})})
    sshd = make_sshd(root)
    hosts: dict[str, HostInfo] = {}
    try:
        sshd.start()
        for i, (name, ssh) in enumerate((("local1", False), ("ssh1", True), ("ssh2", True))):
            d = root / f"h{i}"
            for sub in ("pool", "console", "s"):
                (d / sub).mkdir(parents=True)
            (d / "shared").symlink_to(shared)
            for p in (d, d / "pool", d / "console", d / "s"):
                p.chmod(0o755)
            hosts[name] = HostInfo(name, f"{server.prefix}h{i}-", d / "pool", d / "shared", d / "console",
                                   d / "s", ssh)
        server.data_dir.mkdir(parents=True)
        api = server.add_user("ops@example.com", "ops-pw")
        for host in hosts.values():
            where = (["--ssh", f"root@127.0.0.1:{sshd.port}", "--key", str(sshd.client_key),
                      "--known-hosts", str(sshd.known_hosts)] if host.ssh else ["--local"])
            server.cli("hosts", "add", host.name, *where, "--agent-command", host.agent_command())
        server.start()
        mem = host_mem()
        c = Cluster(root, server, sshd, hosts, shared, api, overcommit * server_mhz, mem)
        c.wait_hosts_up()
        yield c
    finally:
        server.stop()
        sshd.stop()
        for host in hosts.values():
            remove_libvirt_objects(host.prefix)
        remove_libvirt_objects(server.prefix)
        if os.environ.get("STRATO_KEEP_TEST_DIR") is None:
            shutil.rmtree(root, ignore_errors=True)


def host_mem() -> int:
    conn = libvirt.open("qemu:///system")
    try:
        return conn.getInfo()[1] * MiB
    finally:
        conn.close()
