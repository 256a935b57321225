"""A real ``strato serve`` process on a free port, and a small HTTP client for tests."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT.parent / "shared" / "spec"
QEMU_LOGS = Path("/var/log/libvirt/qemu")


def qemu_reachable_dir(name: str) -> Path:
    """A fresh directory QEMU's user can traverse (``strato serve`` refuses a data directory it cannot,
    like pytest's 0700 tmp tree): under /var/tmp, which other test runs do not prune.  Remove it after."""
    root = Path(tempfile.mkdtemp(prefix=f"strato-{name}-", dir="/var/tmp"))
    root.chmod(0o755)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strato(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the ``strato`` command line and return its standard output."""
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], check=True, capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    return out.stdout.strip()


@dataclass
class Api:
    """HTTP client for one user: ``api.get("servers/")`` → ``requests.Response``."""

    base: str
    auth: tuple[str, str] | None
    session: requests.Session = field(default_factory=requests.Session)

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base}/api/2.0/{path.lstrip('/')}"

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                **kw: Any) -> requests.Response:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return self.session.request(method, self.url(path), data=data, auth=self.auth, headers=headers,
                                    timeout=60, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, body, **kw)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        """The JSON body of a request that must answer ``status``."""
        r = self.request(method, path, body)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None


class StratoServer:
    """``strato serve`` in a subprocess with its own data directory (and database URL)."""

    def __init__(self, data_dir: Path, db: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db_args = ["--db", db] if db else []
        # Its own libvirt name prefix (pools, domains) so test servers can share one libvirtd;
        # software emulation because nested KVM guests hang on these machines.
        self.env = {"STRATO_AGENT_PREFIX": f"t{self.port}-", "STRATO_LOCAL_VIRT_TYPE": "qemu", **(extra_env or {})}
        # A caller's own prefix is the one cleaned up; none when it is empty (Strato then derives one
        # from its data directory: the caller cleans that up, see tests/api/test_installations.py).
        self.prefix = self.env["STRATO_AGENT_PREFIX"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "serve.log"

    def cli(self, *args: str) -> str:
        return strato(*args, "--data-dir", str(self.data_dir), *self.db_args, env=self.env)

    def add_user(self, email: str, password: str) -> Api:
        self.cli("users", "create", email, "--password", password)
        return Api(self.base, (email, password))

    def start(self) -> StratoServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "serve", "--data-dir", str(self.data_dir),
                 "--listen", f"127.0.0.1:{self.port}", *self.db_args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"strato serve exited: {self.log.read_text()[-3000:]}")
            try:
                requests.get(f"{self.base}/api/2.0/capabilities/", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"strato serve did not answer: {self.log.read_text()[-3000:]}")

    def wait_host_up(self, timeout: float = 60, count: int = 1) -> None:
        """Until the API node reports ``count`` hosts ``up`` (their agents connected), read from its SQLite
        file (a ``strato hosts list`` per poll would cost a second or two of start-up each)."""

        def up() -> bool:
            with contextlib.closing(sqlite3.connect(self.data_dir / "strato.db", timeout=30)) as con:
                return [row[0] for row in con.execute("SELECT state FROM hosts")].count("up") >= count

        wait_for(up, timeout, f"{count} host(s) up; see {self.log}", interval=0.2)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 15)
        if self.prefix:
            remove_libvirt_objects(self.prefix)


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """``proc`` ended: SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def domain_names(prefix: str, uri: str = "qemu:///system") -> list[str]:
    """The libvirt domains (defined or running) whose names start with ``prefix``, asked of libvirtd."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        return [d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
    finally:
        conn.close()


def remove_libvirt_objects(prefix: str, uri: str = "qemu:///system") -> None:
    """Destroy and undefine the domains, storage pools (with their volumes) and secrets whose names
    (a secret's usage) start with ``prefix``: what one test API node or agent made, and nothing else.
    An RBD pool's images stay: they are in the test's Ceph cluster, which its harness removes.
    On the machine's own libvirtd the domains' QEMU logs go too (a harness host's are in its
    own temporary /var/log/libvirt)."""
    if not prefix:  # every object on the machine would match
        raise ValueError("remove_libvirt_objects needs a non-empty prefix")
    import xml.etree.ElementTree as ET

    import libvirt

    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(prefix):
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        for pool in conn.listAllStoragePools(0):
            if pool.name().startswith(prefix):
                shared = ET.fromstring(pool.XMLDesc(0)).get("type") == "rbd"
                if pool.isActive():
                    for vol in [] if shared else pool.listAllVolumes(0):
                        vol.delete(0)
                    pool.destroy()
                pool.undefine()
        for secret in conn.listAllSecrets(0):
            if (secret.usageID() or "").startswith(prefix):
                secret.undefine()
    finally:
        conn.close()
    if uri == "qemu:///system":  # libvirt keeps each domain's QEMU log after the domain is gone
        for log in QEMU_LOGS.glob(f"{glob.escape(prefix)}*.log*"):
            log.unlink(missing_ok=True)


def load_dump(name: str) -> tuple[str, Any]:
    """A dump file → (first line, JSON body or None)."""
    text = (SPEC / "dumps" / name).read_text()
    head, _, body = text.partition("\n\n")
    body = body.strip()
    return head.splitlines()[0], (json.loads(body) if body else None)


def wait_for(predicate: Callable[[], Any], timeout: float = 120, what: str = "the condition",
             interval: float = 0.25) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def upload(api: Api, name: str, data: bytes) -> str:
    """A raw upload as one request (spec §24.1); returns the drive's uuid once imported."""
    r = api.post(f"drives/upload/{name}/", raw=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    uuid = r.text.strip()
    wait_for(lambda: api.ok("GET", f"drives/{uuid}/")["status"] == "unmounted", 120, f"upload {name}")
    return uuid


def serial_log(domain: str, uri: str = "qemu:///system") -> str:
    """A guest's first serial port as its host logged it (the file the domain XML names; "" until then)."""
    xml = subprocess.run(["virsh", "-c", uri, "dumpxml", domain], capture_output=True, text=True).stdout
    match = re.search(r"<log file=['\"]([^'\"]+)['\"]", xml)
    path = Path(match.group(1)) if match else None
    return path.read_text(errors="replace") if path and path.exists() else ""
