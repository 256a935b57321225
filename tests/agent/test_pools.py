"""Agents sharing one libvirtd (issue 11): two agents of one installation start at once without
crashing on pool or network definition races, and an agent never re-points a pool that another
configuration (another data directory) defined under the same name."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from agents.client import AgentCallError
from agents.xml.storage import DirPool
from tests.agent.conftest import URI, AgentProcess, _open_to_qemu
from tests.strato_process import remove_libvirt_objects


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory for the agents' pools and logs (each test removes its own libvirt objects)."""
    root = Path(tempfile.mkdtemp(prefix="strato-pools-test-", dir="/var/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def agent(base: Path, prefix: str, pool: Path, tag: str) -> AgentProcess:
    pool.mkdir(parents=True, exist_ok=True)
    _open_to_qemu(pool)
    (base / f"console-{tag}").mkdir(exist_ok=True)
    (base / f"s-{tag}").mkdir(exist_ok=True)
    args = ["--uri", URI, "--virt-type", "qemu", "--prefix", prefix, "--pool", f"default={pool}",
            "--console-log-dir", str(base / f"console-{tag}"), "--socket-dir", str(base / f"s-{tag}")]
    return AgentProcess(args=args, stderr_path=base / f"agent-{tag}.stderr")


def remove_networks(prefix: str) -> None:
    conn = libvirt.open(URI)
    try:
        for net in conn.listAllNetworks(0):
            if net.name().startswith(prefix):
                if net.isActive():
                    net.destroy()
                net.undefine()
    finally:
        conn.close()


def pool_path(name: str) -> str:
    conn = libvirt.open(URI)
    try:
        return DirPool.from_xml(conn.storagePoolLookupByName(name).XMLDesc(0)).path
    finally:
        conn.close()


async def test_two_agents_start_at_once(base: Path) -> None:
    """`strato libdrives import` while `strato serve` starts the same host's agent: both agents
    define the pool (and then a network) at the same moment, and both come up."""
    for attempt in range(8):  # a matter of milliseconds (about 1 in 4 crashed before): try it a few times
        prefix = f"t{secrets.token_hex(3)}-"
        pool = base / f"pool-{attempt}"
        pair = [agent(base, prefix, pool, f"{attempt}{side}") for side in "ab"]
        try:
            await asyncio.gather(*(a.start() for a in pair))
            net = {"name": "race", "kind": "isolated"}
            ensured = await asyncio.gather(*(a.client.call("network.ensure", network=net) for a in pair if a.client))
            assert {e["name"] for e in ensured} == {f"{prefix}net-race"}
            for a in pair:
                assert a.client is not None
                assert await a.client.call("ping") == {"pong": True}
                assert "Traceback" not in a.stderr(), a.stderr()
        finally:
            for a in pair:
                await a.stop()
            await asyncio.to_thread(remove_networks, prefix)
            await asyncio.to_thread(remove_libvirt_objects, prefix, URI)


async def test_pool_defined_elsewhere_is_refused_not_redefined(base: Path) -> None:
    """Agent B with A's prefix but another pool directory refuses to run with that pool, names both
    paths, and leaves A's pool pointing at A's directory (A keeps working)."""
    prefix = f"t{secrets.token_hex(3)}-"
    first, second = base / "install-a" / "pool", base / "install-b" / "pool"
    a, b = agent(base, prefix, first, "a"), agent(base, prefix, second, "b")
    try:
        client = await a.start()
        with pytest.raises(AssertionError) as refused:
            await b.start()
        assert b.proc is not None and await b.proc.wait() != 0
        message = b.stderr()
        assert str(first) in message and str(second) in message, message
        assert "Traceback" not in message, message
        assert await asyncio.to_thread(pool_path, f"{prefix}default") == str(first)
        volume = await client.call("volume.create", name="still-mine", size=1 << 20)
        assert volume["path"] == str(first / "still-mine")
        assert [v["name"] for v in await client.call("volume.list")] == ["still-mine"]
        assert "did not answer ping" in str(refused.value)
    finally:
        await a.stop()
        await b.stop()
        await asyncio.to_thread(remove_libvirt_objects, prefix, URI)


def define_foreign(kind: str, xml: str) -> str:
    """A libvirt object the test defines itself (as another installation or an operator would):
    its XML as libvirt holds it, to compare with afterwards."""
    conn = libvirt.open(URI)
    try:
        obj = conn.networkDefineXML(xml) if kind == "network" else conn.storagePoolDefineXML(xml, 0)
        return obj.XMLDesc(0)
    finally:
        conn.close()


def described(kind: str, name: str) -> tuple[str, bool]:
    conn = libvirt.open(URI)
    try:
        obj = conn.networkLookupByName(name) if kind == "network" else conn.storagePoolLookupByName(name)
        return obj.XMLDesc(0), bool(obj.isActive())
    finally:
        conn.close()


async def test_a_foreign_network_of_the_wanted_name_is_refused_and_left_alone(base: Path) -> None:
    """A network named as the agent would name its own, that the agent did not make: ensure,
    reserve and remove are refused with an error saying so, and the network is never redefined,
    started or undefined."""
    prefix = f"t{secrets.token_hex(3)}-"
    name = f"{prefix}net-theirs"
    before = await asyncio.to_thread(define_foreign, "network", f"<network><name>{name}</name></network>")
    a = agent(base, prefix, base / "pool", "a")
    try:
        client = await a.start()
        for method, params in (("network.ensure", {"network": {"name": "theirs", "kind": "isolated"}}),
                               ("network.reserve", {"network": "theirs", "mac": "52:54:00:00:00:01",
                                                    "ip": "10.9.0.2"}),
                               ("network.release", {"network": "theirs", "mac": "52:54:00:00:00:01"}),
                               ("network.remove", {"network": "theirs"})):
            with pytest.raises(AgentCallError) as refused:
                await client.call(method, **params)
            assert refused.value.kind == "invalid", (method, refused.value)
            assert f"{name} exists but was not made by this installation" in refused.value.message, refused.value
            assert await asyncio.to_thread(described, "network", name) == (before, False), method
        assert name not in [n["name"] for n in await client.call("network.list")]
        # Its own networks still work beside it.
        ensured = await client.call("network.ensure", network={"name": "mine", "kind": "isolated"})
        assert ensured["name"] == f"{prefix}net-mine"
        await client.call("network.remove", network="mine")
        assert "Traceback" not in a.stderr(), a.stderr()
    finally:
        await a.stop()
        await asyncio.to_thread(remove_networks, prefix)
        await asyncio.to_thread(remove_libvirt_objects, prefix, URI)


async def test_a_foreign_pool_of_the_wanted_name_is_refused_and_left_alone(base: Path) -> None:
    prefix = f"t{secrets.token_hex(3)}-"
    theirs = base / "theirs"
    theirs.mkdir()
    xml = f"<pool type='dir'><name>{prefix}default</name><target><path>{theirs}</path></target></pool>"
    before = await asyncio.to_thread(define_foreign, "pool", xml)
    a = agent(base, prefix, base / "mine", "a")
    try:
        with pytest.raises(AssertionError):
            await a.start()
        assert a.proc is not None and await a.proc.wait() == 1
        assert f"storage pool {prefix}default is defined at {theirs}" in a.stderr(), a.stderr()
        assert "Traceback" not in a.stderr(), a.stderr()
        assert await asyncio.to_thread(described, "pool", f"{prefix}default") == (before, False)
    finally:
        await a.stop()
        await asyncio.to_thread(remove_libvirt_objects, prefix, URI)
