"""Real hosts for the fault matrix (issue 11): a host whose libvirtd the tests may stop, and whose
pool is a small tmpfs they may fill.

The machine's own libvirtd is shared with other test runs and is never stopped: the host here is a
second, private system-mode libvirtd in a mount namespace of its own (``unshare -m``, slave propagation, with this
fixture's directories bound over /run/libvirt, /var/lib/libvirt, /etc/libvirt, /var/cache/libvirt
and /var/log/libvirt, its own ``host_uuid`` and pid file, QEMU's output to files instead of
virtlogd).  Its agent reaches it through the socket in that run directory.  Guests run as
libvirt-qemu as on any host; the tests kill only processes this fixture started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.strato_process import (
    ROOT,
    Api,
    StratoServer,
    free_port,
    qemu_reachable_dir,
    remove_libvirt_objects,
    terminate,
    wait_for,
)


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
        if self.proc is not None:
            terminate(self.proc, 10)


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


BINDS = ("/run/libvirt", "/var/lib/libvirt", "/etc/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
POOL_SIZE = 160 * 2**20  # the tmpfs pool: room for the test guest and a few copies, small enough to fill


# The faults are the point: clones are whole copies (a copy-on-write clone is instant, nothing to
# cut in the middle), and the small pools may promise more than they hold (so that a full disk is
# what refuses, not the thin-provisioning check of orchestrator/domain/pool_room.py).
FAULT_ENV = {"STRATO_CLONE_MODE": "copy", "STRATO_STORAGE_OVERCOMMIT": "50"}


@dataclass
class PrivateLibvirtd:
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root / 'run' / 'libvirt-sock'}"

    @property
    def pid(self) -> int:
        return int((self.root / "libvirtd.pid").read_text())

    def prepare(self) -> None:
        for sub in ("run", "lib", "etc", "cache", "log"):
            (self.root / sub).mkdir(mode=0o755)
        (self.root / "lib" / "qemu").mkdir()
        (self.root / "log" / "qemu").mkdir()
        for conf in Path("/etc/libvirt").glob("*.conf"):  # the settings only: no domain, pool or network
            shutil.copy(conf, self.root / "etc" / conf.name)
        with (self.root / "etc" / "libvirtd.conf").open("a") as f:
            f.write(f'\nhost_uuid = "{uuid.uuid4()}"\n')
        with (self.root / "etc" / "qemu.conf").open("a") as f:
            f.write('\nstdio_handler = "file"\n')  # no virtlogd in the namespace
            # Display ports of its own: two daemons handing out the same range race for a port.
            f.write("remote_display_port_min = 61000\nremote_display_port_max = 61999\n")
        script = [f"mount --bind {shlex.quote(str(self.root / sub))} {target}"
                  for sub, target in zip(("run", "lib", "etc", "cache", "log"), BINDS, strict=True)]
        script.append(f"exec /usr/sbin/libvirtd -p {shlex.quote(str(self.root / 'libvirtd.pid'))}")
        (self.root / "start.sh").write_text("\n".join(script) + "\n")

    def start(self) -> None:
        (self.root / "libvirtd.pid").unlink(missing_ok=True)
        (self.root / "run" / "libvirt-sock").unlink(missing_ok=True)
        with (self.root / "libvirtd.log").open("ab") as log:
            self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "slave", "sh",
                                          str(self.root / "start.sh")], stdout=log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"private libvirtd exited: {(self.root / 'libvirtd.log').read_text()[-2000:]}")
            try:
                libvirt.open(self.uri).close()
                return True
            except libvirt.libvirtError:
                return False

        wait_for(answers, 60, "the private libvirtd")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)  # `unshare` exec'd sh, which exec'd libvirtd: one process

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class FaultNode:
    """``strato serve`` with one host ``h1``: an agent on the private libvirtd, pool on a tmpfs."""

    root: Path
    libvirtd: PrivateLibvirtd
    server: StratoServer
    api: Api
    prefix: str
    pool: Path
    console: Path

    def pool_files(self) -> list[str]:
        return sorted(os.listdir(self.pool))

    def host_state(self, name: str = "h1") -> str:
        return {h["name"]: h["state"] for h in json.loads(self.server.cli("hosts", "list"))}[name]

    def wait_host(self, state: str, timeout: float = 90) -> None:
        wait_for(lambda: self.host_state() == state, timeout, f"h1 {state}; see {self.server.log}")

    def agent_pids(self) -> list[int]:
        """This fixture's agent processes (by the prefix on their command line)."""
        return processes(lambda argv: "agents.cli" in argv and self.prefix in argv)

    def qemu_pid(self, server_uuid: str) -> int:
        return int((self.libvirtd.root / "run" / "qemu" / f"{self.prefix}{server_uuid}.pid").read_text())


def processes(match: Any) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if match([a.decode(errors="replace") for a in argv]):
                    pids.append(int(entry.name))
    return pids


def reason_is_clean(error: str, data_dir: Path) -> None:
    """A failed job's reason as its owner reads it: text, no traceback, no host path but its own."""
    assert error and "Traceback" not in error and "File \"" not in error, error
    for path in re.findall(r"(?<![\w.~])/[^\s'\"`,;:()\[\]{}<>]+", error):
        assert path.startswith((str(data_dir), "/usr", "/bin", "/sbin")), (path, error)


@pytest.fixture(scope="package")
def fault_node() -> Iterator[FaultNode]:
    root = qemu_reachable_dir("faultmx")
    libvirtd = PrivateLibvirtd(root / "libvirtd")
    (root / "libvirtd").mkdir()
    (root / "libvirtd").chmod(0o755)
    prefix = f"stfm{uuid.uuid4().hex[:6]}-"
    server = StratoServer(root / "data", extra_env={"STRATO_LOCAL_HOST": "false", "STRATO_HEARTBEAT": "1",
                                                   "STRATO_AGENT_PREFIX": prefix, **FAULT_ENV})
    mount = server.data_dir / "pools" / "h1"  # under the data directory: job reasons may name it
    pool, console, sockets = mount / "pool", server.data_dir / "console", server.data_dir / "s"
    mounted = False
    try:
        libvirtd.prepare()
        for d in (mount, console, sockets):
            d.mkdir(parents=True)
        for d in (root / "data", root / "data" / "pools", mount, console, sockets):
            d.chmod(0o755)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={POOL_SIZE},mode=0755", "strato-faults", str(mount)],
                       check=True)
        mounted = True
        pool.mkdir(mode=0o755)
        libvirtd.start()  # its namespace receives the mounts made outside it (slave propagation), not vice versa
        api = server.add_user("fay@example.com", "fay-pw")
        command = (f"env PYTHONPATH={ROOT} {sys.executable} -m agents.cli --stdio --uri {shlex.quote(libvirtd.uri)} "
                   f"--prefix {prefix} --pool default={pool} --virt-type qemu --console-log-dir {console} "
                   f"--socket-dir {sockets}")
        server.cli("hosts", "add", "h1", "--local", "--agent-command", command)
        server.start()
        node = FaultNode(root, libvirtd, server, api, prefix, pool, console)
        node.wait_host("up")
        yield node
    finally:
        server.stop()
        if libvirtd.proc is not None:
            with contextlib.suppress(Exception):
                if libvirtd.proc.poll() is not None:
                    libvirtd.start()  # a test left it stopped: its guests are removed through it
                remove_libvirt_objects(prefix, libvirtd.uri)
            libvirtd.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        if os.environ.get("STRATO_KEEP_TEST_DIR") is None:
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class SshNode:
    """``strato serve`` with one remote host ``ssh1`` reached over a real sshd on loopback."""

    server: StratoServer
    sshd: Sshd
    api: Api
    pool: Path

    def pool_files(self) -> list[str]:
        return sorted(os.listdir(self.pool))

    def host_state(self) -> str:
        return {h["name"]: h["state"] for h in json.loads(self.server.cli("hosts", "list"))}["ssh1"]


@pytest.fixture(scope="package")
def ssh_node() -> Iterator[SshNode]:
    root = qemu_reachable_dir("faultssh")
    prefix = f"stfs{uuid.uuid4().hex[:6]}-"
    server = StratoServer(root / "data", extra_env={"STRATO_LOCAL_HOST": "false", "STRATO_HEARTBEAT": "1",
                                                   "STRATO_AGENT_PREFIX": prefix, **FAULT_ENV})
    sshd = make_sshd(root)
    pool, console, sockets = server.data_dir / "pools" / "ssh1", server.data_dir / "console", server.data_dir / "s"
    try:
        for d in (pool, console, sockets):
            d.mkdir(parents=True)
        for d in (root / "data", root / "data" / "pools", pool, console, sockets):
            d.chmod(0o755)
        sshd.start()
        api = server.add_user("sam@example.com", "sam-pw")
        command = (f"env PYTHONPATH={ROOT} {sys.executable} -m agents.cli --stdio --prefix {prefix} "
                   f"--pool default={pool} --virt-type qemu --console-log-dir {console} --socket-dir {sockets}")
        server.cli("hosts", "add", "ssh1", "--ssh", f"root@127.0.0.1:{sshd.port}", "--key", str(sshd.client_key),
                   "--known-hosts", str(sshd.known_hosts), "--agent-command", command)
        server.start()
        node = SshNode(server, sshd, api, pool)
        wait_for(lambda: node.host_state() == "up", 90, f"ssh1 up; see {server.log}")
        yield node
    finally:
        server.stop()  # removes the prefix's libvirt objects
        sshd.stop()
        if os.environ.get("STRATO_KEEP_TEST_DIR") is None:
            shutil.rmtree(root, ignore_errors=True)
