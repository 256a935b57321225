"""The wire definitions on their own (no libvirt): encoding, the method table, the client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from agents import wire
from agents.client import AgentClient
from tests.agent.test_domain_xml import full_server


class Loopback:
    """A reader and writer pair that records each request line and answers it with `{}`."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        self.replies.put_nowait(json.dumps({"id": json.loads(data)["id"], "result": {}}).encode() + b"\n")

    async def drain(self) -> None:
        pass

    async def readline(self) -> bytes:
        return await self.replies.get()


async def test_client_encodes_structs_like_dicts() -> None:
    raw = full_server()
    server = wire.convert(raw, wire.Server)
    loop = Loopback()
    client = AgentClient(loop, loop)
    try:
        await client.call("domain.start", server=raw, timeout=5)
        await client.call("domain.start", server=server, timeout=5)
        await client.call("domain.start", wire.DomainSpec(server=server), timeout=5)
        with pytest.raises(TypeError):
            await client.call("domain.start", wire.DomainRef(uuid=server.uuid))
    finally:
        await client.close()
    bodies = [line.replace(b'"id": %d' % n, b'"id": 0') for n, line in enumerate(loop.sent, 1)]
    assert bodies[0] == bodies[1] == bodies[2]


def test_a_struct_built_by_hand_equals_the_decoded_one() -> None:
    """How the orchestrator will build it: keywords named like today's dict keys."""
    raw = full_server()
    built = wire.Server(**{**raw, "drives": [wire.ServerDrive(**d) for d in raw["drives"]],
                           "nics": [wire.ServerNic(**n) for n in raw["nics"]]})
    assert built == wire.convert(raw, wire.Server)
    assert msgspec.to_builtins(built) == raw


def test_every_method_has_a_params_struct() -> None:
    for name, method in wire.METHODS.items():
        assert issubclass(method.params, wire.Message), name
    assert wire.convert({"extra": 1}, wire.NoParams) == wire.NoParams()  # unknown keys are ignored


@pytest.mark.parametrize(("params", "kind", "message"), [
    ({"name": "x"}, wire.VolumeCreate, "params: Object missing required field `size`"),
    ({"name": "x", "size": 0}, wire.VolumeCreate, "params.size: Expected `int` >= 1"),
    ({"name": "../x", "size": 1}, wire.VolumeCreate, "params.name: Expected `str` matching regex"),
    ({"uuids": "a"}, wire.DomainStatsQuery, "params.uuids: Expected `array | null`, got `str`"),
    ({"network": {"name": "n", "kind": "nat"}}, wire.NetworkEnsure, "params.network: nat needs address and prefix"),
    ({"network": {"name": "n", "kind": "bridge"}}, wire.NetworkEnsure, "params.network: bridge: the operator"),
    ({"network": {"name": "n", "kind": "isolated", "vni": 1 << 24}}, wire.NetworkEnsure, "params.network.vni"),
    ({"network": {"name": "n", "kind": "isolated", "peers": [{"address": "x", "port": 1}]}}, wire.NetworkEnsure,
     "params.network.peers.0: 'x' does not appear to be an IPv4 or IPv6 address"),
    ({"network": "n", "mac": "nope", "ip": "10.0.0.1"}, wire.NetworkReserve, "params.mac"),
    ({"network": "n", "mac": "22:00:00:00:00:01", "ip": "10.0.0.300"}, wire.NetworkReserve, "params: ip: not"),
])
def test_invalid_params_name_their_path(params: dict[str, Any], kind: type, message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        wire.convert(params, kind)
    assert str(err.value).startswith(message), str(err.value)


def test_values_are_normalised() -> None:
    reserve = wire.convert({"network": "n", "mac": "22:00:00:00:00:AB", "ip": "FE80::0:1"}, wire.NetworkReserve)
    assert (reserve.mac, reserve.ip) == ("22:00:00:00:00:ab", "fe80::1")
    assert wire.convert({"address": "::0001", "port": 4789}, wire.VxlanEndpoint).address == "::1"


def test_channel_limits() -> None:
    assert wire.parse_channel("virtio", "170:5") == (170, 5)
    assert wire.parse_channel("ide", "1:1") == (1, 1)
    for device, channel in (("ide", "2:0"), ("virtio", "0:6"), ("scsi", "171:0"), ("virtio", "a:b")):
        with pytest.raises(ValueError, match="dev_channel"):
            wire.parse_channel(device, channel)
