"""Fixtures for the agent tests: a real `agent --stdio` subprocess against the real libvirtd,
real QEMU guests (domain type qemu), and the test guest image.

Nothing is skipped: an unreachable libvirtd or a missing guest image fails the tests.
Each module gets its own prefix and pool; teardown removes every domain with that prefix
and the pool, talking to libvirt directly so it works even when the agent died.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agents.client import AgentCallError, AgentClient
from tests.strato_process import remove_libvirt_objects

ROOT = Path(__file__).resolve().parents[2]
GUEST_IMAGE = ROOT / "build" / "guest" / "strato-guest.img"
URI = "qemu:///system"


def new_uuid() -> str:
    return str(uuid.uuid4())


def make_marker_file(directory: Path, marker: str, size: int = 1 << 20) -> Path:
    """A raw image whose first bytes name it, for the guest's report to find."""
    path = directory / f"{marker}.raw"
    with open(path, "wb") as f:
        f.write(f"STRATO-MARKER:{marker}\n".encode())
        f.truncate(size)
    return path


def server_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "uuid": new_uuid(), "name": "test", "cpu": 2000, "mem": 192 << 20, "smp": 1,
        "cpus_instead_of_cores": False, "enable_numa": False, "hv_relaxed": False, "hv_tsc": False,
        "cpu_model": None, "vnc_password": "secret-password", "context": False, "drives": [], "nics": [],
    }
    spec.update(overrides)
    return spec


def drive(volume: str, device: str, channel: str, media: str = "disk", boot_order: int | None = None) -> dict[str, Any]:
    return {"uuid": new_uuid(), "pool": None, "volume": volume, "media": media, "device": device,
            "dev_channel": channel, "boot_order": boot_order}


@dataclass
class Report:
    """What the guest printed between STRATO-REPORT-BEGIN and -END."""

    values: dict[str, str] = field(default_factory=dict)
    numa: list[dict[str, str]] = field(default_factory=list)
    blocks: list[dict[str, str]] = field(default_factory=list)
    nics: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Report:
        report = cls()
        for line in text.splitlines():
            line = line.strip()
            kind, _, rest = line.partition(" ")
            fields_ = dict(re.findall(r"(\S+?)=(\S*)", rest))
            if kind == "numa":
                report.numa.append(fields_)
            elif kind == "block":
                report.blocks.append(fields_)
            elif kind == "nic":
                report.nics.append(fields_)
            elif "=" in line:
                key, _, value = line.partition("=")
                report.values[key] = value
        return report


async def wait_for_report(log_path: str, occurrence: int = 1, timeout: float = 120) -> Report:
    """The `occurrence`-th report in the serial log (a reset prints another one)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = Path(log_path).read_text(errors="replace").replace("\r", "")
        except FileNotFoundError:
            text = ""
        reports = re.findall(r"STRATO-REPORT-BEGIN\n(.*?)STRATO-REPORT-END", text, re.S)
        if len(reports) >= occurrence:
            return Report.parse(reports[occurrence - 1])
        await asyncio.sleep(0.5)
    raise AssertionError(f"no report #{occurrence} in {log_path} after {timeout}s; log tail:\n{text[-2000:]}")


# What QEMU 7.2's TCG (software emulation, the only kind the CI machines run) rarely does to a
# guest that is otherwise fine: QEMU itself aborts ("msix_table_mmio_write: Assertion … failed",
# libvirt logs reason=crashed), or a vCPU stops being run and the guest kernel reports a stall
# long before it prints anything of ours. Neither says anything about the domain we defined.
TCG_STALL = re.compile(r"soft lockup - CPU#|rcu_preempt self-detected stall")


def _emulator_failed(domain_name: str, console_log: str) -> bool:
    qemu_log = Path("/var/log/libvirt/qemu") / f"{domain_name}.log"
    try:
        if "reason=crashed" in qemu_log.read_text(errors="replace")[-300:]:
            return True
    except FileNotFoundError:
        pass
    try:
        console = Path(console_log).read_text(errors="replace")
    except FileNotFoundError:
        return False
    return "STRATO-REPORT-BEGIN" not in console and TCG_STALL.search(console) is not None


async def boot_for_report(client: AgentClient, spec: dict[str, Any], timeout: float = 120,
                          on_start: Callable[[], Awaitable[None]] | None = None) -> tuple[dict[str, Any], Report]:
    """Start `spec` and wait for its guest's report (`on_start` runs right after each start).
    Boots once more only when the emulator failed (see TCG_STALL); any other failure is the test's."""
    for attempt in (1, 2):
        started = await client.call("domain.start", server=spec, timeout=60)
        if on_start is not None:
            await on_start()
        try:
            return started, await wait_for_report(started["console_log"], timeout=timeout)
        except AssertionError:
            if attempt == 2 or not _emulator_failed(started["name"], started["console_log"]):
                raise
            with contextlib.suppress(AgentCallError):
                await client.call("domain.stop", uuid=spec["uuid"])
            with contextlib.suppress(FileNotFoundError):
                Path(started["console_log"]).unlink()
    raise AssertionError("unreachable")


@dataclass
class AgentProcess:
    """A running `agent --stdio` with its client; `restart()` starts a fresh process."""

    args: list[str]
    stderr_path: Path
    proc: asyncio.subprocess.Process | None = None
    client: AgentClient | None = None

    async def start(self) -> AgentClient:
        with open(self.stderr_path, "ab") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agents.cli", "--stdio", *self.args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=ROOT,
                limit=16 << 20,
            )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.client = AgentClient(self.proc.stdout, self.proc.stdin)
        try:
            assert await self.client.call("ping", timeout=30) == {"pong": True}
        except Exception as err:
            raise AssertionError(f"agent did not answer ping ({err!r}); stderr:\n{self.stderr()}") from err
        return self.client

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self.client is not None:
            await self.client.close()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.client is not None:
            await self.client.close()


@dataclass
class AgentEnv:
    prefix: str
    base: Path
    pool_dir: Path
    log_dir: Path
    sock_dir: Path
    agent: AgentProcess

    @property
    def client(self) -> AgentClient:
        assert self.agent.client is not None
        return self.agent.client

    def console_log(self, server_uuid: str) -> str:
        return str(self.log_dir / f"{self.prefix}{server_uuid}.log")


def _open_to_qemu(path: Path) -> None:
    """QEMU runs as libvirt-qemu: let it traverse our private (0700) tmp tree."""
    for p in [path, *path.parents]:
        if str(p) in ("/", "/tmp", "/var/tmp"):
            break
        os.chmod(p, os.stat(p).st_mode | 0o755)


async def make_agent_env(*extra: str) -> AgentEnv:
    if not GUEST_IMAGE.exists():
        pytest.fail(f"{GUEST_IMAGE} is missing: run tests/guest/build-image.sh")
    # Not pytest's tmp_path: other pytest runs sharing this machine prune old numbered
    # basetemps, which would delete a running guest's disks. Removed again at teardown.
    base = Path(tempfile.mkdtemp(prefix="strato-agent-test-", dir="/var/tmp"))
    prefix = f"t{secrets.token_hex(3)}-"
    pool_dir, log_dir, sock_dir = base / "pool", base / "console", base / "s"
    for d in (pool_dir, log_dir, sock_dir):
        d.mkdir()
    _open_to_qemu(pool_dir)
    args = ["--uri", URI, "--virt-type", "qemu", "--prefix", prefix, "--pool", f"default={pool_dir}",
            "--console-log-dir", str(log_dir), "--socket-dir", str(sock_dir), *extra]
    agent = AgentProcess(args=args, stderr_path=base / "agent.stderr")
    env = AgentEnv(prefix=prefix, base=base, pool_dir=pool_dir, log_dir=log_dir, sock_dir=sock_dir, agent=agent)
    await agent.start()
    return env


@pytest.fixture(scope="module")
async def agent_env() -> AsyncIterator[AgentEnv]:
    env = await make_agent_env("--cores-per-numa-node", "2")
    try:
        yield env
    finally:
        await env.agent.stop()
        await asyncio.to_thread(remove_libvirt_objects, env.prefix, URI)
        shutil.rmtree(env.base, ignore_errors=True)


@pytest.fixture(scope="module")
async def boot_volume(agent_env: AgentEnv) -> str:
    """The test guest image imported once per module (raw → qcow2) as volume `boot`."""
    vol = await agent_env.client.call("volume.import", name="boot", source_path=str(GUEST_IMAGE), timeout=120)
    assert vol["format"] == "qcow2"
    return "boot"


async def import_markers(env: AgentEnv, *markers: str) -> None:
    for marker in markers:
        source = make_marker_file(env.base, marker)
        await env.client.call("volume.import", name=marker, source_path=str(source), timeout=60)
