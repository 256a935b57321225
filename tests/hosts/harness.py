"""Real hypervisor hosts on one machine: each its own network and mount namespace, libvirtd, virtlogd, sshd.

A host here is what a hypervisor is in production, as far as the API node can tell: an address on a
network (a veth into a bridge the harness makes, on a /24 no route of this machine uses), an sshd
that lets the API node's key in, and behind it a libvirtd of its own (its own ``host_uuid``, its own
``/run/libvirt``, ``/var/lib/libvirt``, ``/etc/libvirt``, ``/var/cache/libvirt`` and
``/var/log/libvirt``: temporary directories bind-mounted in the host's mount namespace), so QEMU
guests, their sockets and their logs live on that host only.  The machine's own libvirtd and
virtlogd are never touched.  libvirtd listens on no TCP port: the hosts' libvirtds reach each
other (peer-to-peer migration) over SSH, each host's root with a key of its own that every other
host trusts (``qemu+ssh://root@ADDRESS/system``), as hypervisors of one cloud are set up.

Each host's namespaces are held by one ``sleep`` process started with ``ip netns exec NS unshare
--mount``; the daemons are started inside (``nsenter`` into that process), and so is the agent:
sshd runs it there for the API node.  :meth:`Hosts.close` kills every process of every host, removes
the namespaces, the bridge and the directories, and is safe to call after any failure.

    python -m tests.hosts.harness up --hosts 2      # print what was made (JSON), keep it
    python -m tests.hosts.harness down DIR          # tear down what `up` made
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = {  # directory of the host (under its root) → where its mount namespace sees it
    "etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt", "log": "/var/log/libvirt",
}
QEMU_DIRS = ("channel/target", "checkpoint", "dump", "nvram", "ram", "save", "snapshot")
CLONE_NEWNET = 0x40000000  # setns(2): join a network namespace


def run(*argv: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that overlaps no route and no address of this machine (random, so parallel runs differ)."""
    used = [ipaddress.ip_network(line.split()[0], strict=False)
            for line in run("ip", "-4", "route", "show", "table", "all").stdout.splitlines()
            if line and line.split()[0][0].isdigit()]
    used += [ipaddress.ip_interface(a).network for a in run("ip", "-4", "-o", "addr").stdout.split() if "/" in a
             and a[0].isdigit()]
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(254) + 1}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.x.y.0/24")


@dataclass
class Host:
    index: int
    name: str            # also the network namespace's name
    root: str            # its directories on this machine
    address: str         # on the test bridge
    host_uuid: str
    prefix: str          # libvirt name prefix of its agent
    holder: int = 0      # pid of the process that holds its namespaces
    pids: dict[str, int] = field(default_factory=dict)  # daemon → pid

    @property
    def path(self) -> Path:
        return Path(self.root)

    @property
    def pool_dir(self) -> Path:
        return self.path / "pool"

    @property
    def console_dir(self) -> Path:
        return self.path / "console"

    @property
    def socket_dir(self) -> Path:
        return self.path / "sockets"

    @property
    def libvirt_socket(self) -> Path:
        return self.path / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """Its libvirtd, from this machine (the socket in its private /run/libvirt)."""
        return f"qemu+unix:///system?socket={self.libvirt_socket}"

    @property
    def migration_uri(self) -> str:
        """Its libvirtd, from another host's: over SSH, with the hosts' root trust (each host's ssh client
        config names its own key and the harness's known hosts; libvirtd listens on no TCP port)."""
        return f"qemu+ssh://root@{self.address}/system"

    def console_log(self, domain: str) -> Path:
        return self.console_dir / f"{domain}.log"

    @property
    def libvirtd_argv(self) -> list[str]:
        return ["libvirtd", "-d", "-p", str(self.path / "libvirtd.pid"), "-f", str(self.path / "etc" / "libvirtd.conf")]

    def inside(self, *argv: str) -> list[str]:
        """``argv`` run in this host's namespaces."""
        return ["nsenter", "-t", str(self.holder), "-m", "-n", "--", *argv]

    def connect_inside(self, address: str, port: int, timeout: float = 10) -> socket.socket:
        """A TCP connection made from inside the host's network namespace (to its loopback, say), usable here.

        The socket is created by a thread that has joined the host's network namespace (setns(2) moves only
        the calling thread); a socket stays in the namespace it was made in."""
        result: list[socket.socket | BaseException] = []

        def inside() -> None:
            try:
                with open(f"/run/netns/{self.name}") as ns:
                    if ctypes.CDLL(None, use_errno=True).setns(ns.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {self.name}")
                result.append(socket.create_connection((address, port), timeout))
            except BaseException as err:  # handed to the caller's thread
                result.append(err)

        thread = threading.Thread(target=inside)  # it ends in the namespace: nothing else runs on it
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        result[0].settimeout(None)
        return result[0]

    def agent_command(self, shared: Path | None, extra: str = "") -> str:
        """``extra``: more agent options, appended (e.g. ``--vxlan-local`` with this host's address)."""
        pools = f"--pool default={self.pool_dir}" + (f" --pool shared={shared}" if shared else "")
        return (f"env PYTHONPATH={ROOT} {sys.executable} -m agents.cli --stdio --prefix {self.prefix} {pools} "
                f"--virt-type qemu --console-log-dir {self.console_dir} --socket-dir {self.socket_dir} "
                f"--migrate-uri {self.migration_uri} --migrate-address {self.address}" + (f" {extra}" if extra else ""))


@dataclass
class Hosts:
    root: str
    tag: str
    subnet: str
    bridge: str
    gateway: str         # this machine's (the API node's) address on the bridge
    shared: str          # a directory every host sees at the same path (as an NFS mount would be)
    client_key: str      # the API node's SSH key, authorised on every host
    known_hosts: str
    hosts: list[Host] = field(default_factory=list)

    def save(self) -> None:
        (Path(self.root) / "hosts.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, root: Path) -> Hosts:
        data = json.loads((root / "hosts.json").read_text())
        data["hosts"] = [Host(**h) for h in data["hosts"]]
        return cls(**data)

    def register(self, cli: Callable[..., str], agent_options: Callable[[Host], str] | None = None) -> None:
        """Add every host to an API node, reached over SSH (``cli`` runs one ``strato`` command of it);
        ``agent_options`` gives a host's extra agent options."""
        for host in self.hosts:
            extra = agent_options(host) if agent_options else ""
            cli("hosts", "add", host.name, "--ssh", f"root@{host.address}:22", "--key", self.client_key,
                "--known-hosts", self.known_hosts, "--agent-command", host.agent_command(Path(self.shared), extra))

    def kill_libvirtd(self, host: Host) -> None:
        """SIGKILL the host's libvirtd (its guests keep running, as on a real host)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(host.pids["libvirtd"], signal.SIGKILL)

    def kill_host(self, host: Host) -> None:
        """The host dies: every process in it (sshd, libvirtd, QEMU…) killed at once."""
        for pid in run("ip", "netns", "pids", host.name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def start_libvirtd(self, host: Host) -> None:
        d = host.path
        (d / "libvirtd.pid").unlink(missing_ok=True)
        out = run(*host.inside(*host.libvirtd_argv), check=False)
        if out.returncode != 0:
            raise RuntimeError(f"host {host.name}: libvirtd failed: {out.stderr}")
        host.pids["libvirtd"] = _wait_pidfile(d / "libvirtd.pid")
        self.save()
        _wait_libvirtd(host)

    def stop_sshd(self, host: Host) -> None:
        """Stop the host's sshd listener: new SSH connections are refused, open sessions go on (as OpenSSH does)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(host.pids["sshd"], signal.SIGTERM)
        _wait_gone(host.pids["sshd"])

    def start_sshd(self, host: Host) -> None:
        pidfile = host.path / "ssh" / "sshd.pid"
        pidfile.unlink(missing_ok=True)
        out = run(*host.inside(*_sshd_argv(host)), check=False)
        if out.returncode != 0:
            raise RuntimeError(f"host {host.name}: sshd failed: {out.stderr}")
        host.pids["sshd"] = _wait_pidfile(pidfile)
        self.save()
        _wait_ssh(self, host)

    def close(self) -> None:
        for host in self.hosts:
            _stop_host(host)
        for host in self.hosts:
            run("ip", "netns", "del", host.name, check=False)
        run("ip", "link", "del", self.bridge, check=False)
        if os.environ.get("STRATO_KEEP_TEST_DIR") is None:
            shutil.rmtree(self.root, ignore_errors=True)


def make_hosts(count: int, *, root: Path | None = None) -> Hosts:
    """``count`` hosts, up, their sshd letting the returned ``client_key`` in.  Closes what it made on failure."""
    tag = f"sh{secrets.token_hex(2)}"
    base = root or Path(tempfile.mkdtemp(prefix="strato-hosts-", dir="/var/tmp"))
    base.chmod(0o755)
    net = free_subnet()
    addresses = list(net.hosts())
    keys = base / "ssh"
    keys.mkdir()
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client_key"))
    shared = base / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    hosts = Hosts(str(base), tag, str(net), f"{tag}br", str(addresses[0]), str(shared), str(keys / "client_key"),
                  str(keys / "known_hosts"))
    try:
        run("ip", "link", "add", hosts.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{addresses[0]}/{net.prefixlen}", "dev", hosts.bridge)
        run("ip", "link", "set", hosts.bridge, "up")
        for i in range(count):
            host = Host(i, f"{tag}h{i}", str(base / f"h{i}"), str(addresses[10 + i]), str(uuid.uuid4()),
                        f"{tag}h{i}-")
            hosts.hosts.append(host)
            hosts.save()
            _start_host(hosts, host)
        hosts.save()
        known = "".join(f"{h.address} {(h.path / 'ssh' / 'host_key.pub').read_text().split()[0]} "
                        f"{(h.path / 'ssh' / 'host_key.pub').read_text().split()[1]}\n" for h in hosts.hosts)
        Path(hosts.known_hosts).write_text(known)
        trusted = "".join((h.path / "ssh" / "root_key.pub").read_text() for h in hosts.hosts)
        for host in hosts.hosts:  # every host's root may log in to every other (migrations)
            with (host.path / "ssh" / "authorized_keys").open("a") as keys:
                keys.write(trusted)
        for host in hosts.hosts:
            _wait_ssh(hosts, host)
        return hosts
    except BaseException:
        hosts.close()
        raise


def _start_host(hosts: Hosts, host: Host) -> None:
    d = host.path
    for sub in (*PRIVATE, "pool", "console", "sockets", "ssh"):
        (d / sub).mkdir(parents=True)
    for p in (d, d / "pool", d / "console", d / "sockets", d / "lib", d / "run"):
        p.chmod(0o755)
    qemu_lib = d / "lib" / "qemu"
    for sub in QEMU_DIRS:
        (qemu_lib / sub).mkdir(parents=True)
    run("chown", "-R", "libvirt-qemu:libvirt-qemu", str(qemu_lib))
    qemu_lib.chmod(0o751)
    (d / "lib" / "images").mkdir()
    _write_libvirt_config(host)
    ssh = d / "ssh"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "host_key"))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "root_key"))  # this host's root, to the others
    shutil.copy(f"{hosts.client_key}.pub", ssh / "authorized_keys")
    # The ssh client of everything on this host (libvirtd's peer-to-peer migrations): bind-mounted over
    # /etc/ssh/ssh_config in its mount namespace, as an operator would configure root's ssh.
    (ssh / "ssh_config").write_text("\n".join([
        "Host *", f"  IdentityFile {ssh / 'root_key'}", f"  UserKnownHostsFile {hosts.known_hosts}",
        "  StrictHostKeyChecking yes", "  BatchMode yes", ""]))
    (ssh / "sshd_config").write_text("\n".join([
        "Port 22", f"ListenAddress {host.address}", f"HostKey {ssh / 'host_key'}", f"PidFile {ssh / 'sshd.pid'}",
        f"AuthorizedKeysFile {ssh / 'authorized_keys'}", "PermitRootLogin prohibit-password", "StrictModes no",
        "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "Subsystem sftp internal-sftp", "MaxStartups 100", "AllowTcpForwarding yes",
        "AllowStreamLocalForwarding yes", "LogLevel VERBOSE", ""]))

    # network: a veth whose far end is the host's eth0
    run("ip", "netns", "add", host.name)
    outside = f"{hosts.tag}v{host.index}"
    run("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", host.name)
    run("ip", "link", "set", outside, "master", hosts.bridge, "up")
    net = ipaddress.ip_network(hosts.subnet)
    for argv in (("ip", "addr", "add", f"{host.address}/{net.prefixlen}", "dev", "eth0"),
                 ("ip", "link", "set", "eth0", "up"), ("ip", "link", "set", "lo", "up")):
        run("ip", "netns", "exec", host.name, *argv)

    # mount namespace: a holder process, private libvirt directories bind-mounted inside
    # A sysfs of the host's network namespace (as `ip netns exec` mounts), with the machine's
    # cgroup hierarchies kept under it: libvirtd puts each guest in cgroups (CPU quota).
    stage = d / "cgroup"
    stage.mkdir()
    binds = " && ".join([f"mount --rbind /sys/fs/cgroup {stage}", "mount -t sysfs sysfs /sys",
                         f"mount --rbind {stage} /sys/fs/cgroup", f"umount -l {stage}",
                         *(f"mount --bind {d / sub} {target}" for sub, target in PRIVATE.items()),
                         f"mount --bind {ssh / 'ssh_config'} /etc/ssh/ssh_config"])
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "nsenter", f"--net=/run/netns/{host.name}", "--",
         "sh", "-c", f"{binds} && echo ready && exec sleep infinity"],
        stdout=subprocess.PIPE, stderr=(d / "holder.log").open("ab"), start_new_session=True, text=True)
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "ready":
        raise RuntimeError(f"host {host.name}: mounts failed: {(d / 'holder.log').read_text()}")
    host.holder = holder.pid
    hosts.save()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    daemons = {
        "virtlogd": ["virtlogd", "-d", "-p", str(d / "virtlogd.pid")],
        "libvirtd": host.libvirtd_argv,
        "sshd": _sshd_argv(host),
    }
    pidfiles = {"virtlogd": d / "virtlogd.pid", "libvirtd": d / "libvirtd.pid", "sshd": ssh / "sshd.pid"}
    for name, argv in daemons.items():
        out = run(*host.inside(*argv), check=False)
        if out.returncode != 0:
            raise RuntimeError(f"host {host.name}: {name} failed: {out.stderr}")
        host.pids[name] = _wait_pidfile(pidfiles[name])
        hosts.save()
    _wait_libvirtd(host)


def _sshd_argv(host: Host) -> list[str]:
    ssh = host.path / "ssh"
    return ["/usr/sbin/sshd", "-f", str(ssh / "sshd_config"), "-E", str(ssh / "sshd.log")]


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} still there after {timeout}s")


def _write_libvirt_config(host: Host) -> None:
    etc = host.path / "etc"
    (etc / "libvirtd.conf").write_text("\n".join([
        f'host_uuid = "{host.host_uuid}"', "listen_tls = 0", "listen_tcp = 0",
        'unix_sock_group = "root"', 'unix_sock_rw_perms = "0770"',
        f'log_outputs = "2:file:{host.path / "log" / "libvirtd.log"}"', ""]))
    shutil.copy("/etc/libvirt/qemu.conf", etc / "qemu.conf")
    with (etc / "qemu.conf").open("a") as f:
        # migration data and NBD (copy storage) listen on the host's own address
        f.write(f'\nmigration_address = "{host.address}"\nmigration_host = "{host.address}"\n')
    (etc / "virtlogd.conf").write_text(f'log_outputs = "2:file:{host.path / "log" / "virtlogd.log"}"\n')
    (etc / "libvirt.conf").write_text("")


def _wait_pidfile(path: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text().strip())
        time.sleep(0.1)
    raise RuntimeError(f"no pid in {path}")


def _wait_libvirtd(host: Host, timeout: float = 60) -> None:
    import libvirt

    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt.open(host.uri).close()
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _wait_ssh(hosts: Hosts, host: Host, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        probe = run("ssh", "-i", hosts.client_key, "-o", "BatchMode=yes",
                    "-o", f"UserKnownHostsFile={hosts.known_hosts}",
                    "-o", "StrictHostKeyChecking=yes", f"root@{host.address}", "test -S /run/libvirt/libvirt-sock",
                    check=False)
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"host {host.name}: ssh: {probe.stderr}")
        time.sleep(0.3)


def _stop_host(host: Host) -> None:
    """Kill every process in the host's network namespace (daemons, QEMU, agents), then its holder."""
    if host.holder:
        with contextlib.suppress(Exception):
            _destroy_domains(host)
    for _ in range(3):
        pids = [int(p) for p in run("ip", "netns", "pids", host.name, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    if host.holder:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.holder, signal.SIGKILL)


def _destroy_domains(host: Host) -> None:
    import libvirt

    conn = libvirt.open(host.uri)
    try:
        for dom in conn.listAllDomains(0):
            if dom.isActive():
                dom.destroy()
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="testhosts", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make hosts and print them as JSON")
    up.add_argument("--hosts", type=int, default=2)
    down = sub.add_parser("down", help="tear down what `up` made")
    down.add_argument("dir", type=Path)
    args = parser.parse_args()
    if args.command == "up":
        hosts = make_hosts(args.hosts)
        print(json.dumps({**asdict(hosts), "agent_commands": {h.name: h.agent_command(Path(hosts.shared))
                                                             for h in hosts.hosts}}, indent=1))
    else:
        Hosts.load(args.dir).close()


if __name__ == "__main__":
    main()
