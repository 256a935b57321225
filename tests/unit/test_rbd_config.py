"""The RBD pool configuration: the API node's ``rbd_pools`` become the agent's ``--rbd-pool`` flags,
which the agent reads back as the same pools (and a config file's objects the same way)."""

from __future__ import annotations

import json

import pytest

from agents.cli import load_config, parse_args
from agents.rbd import RbdPoolConfig
from orchestrator.hosts.registry import rbd_pool_flags

POOL = {"name": "ceph", "pool": "vms", "user": "strato", "keyring": "/etc/ceph/ceph.client.strato.keyring",
        "monitors": ["10.0.0.1:6789", "10.0.0.2:3300"], "timeout": 7}
EXPECTED = RbdPoolConfig(name="ceph", pool="vms", user="strato", keyring="/etc/ceph/ceph.client.strato.keyring",
                         monitors=("10.0.0.1:6789", "10.0.0.2:3300"), timeout=7)


def agent_config(argv: list[str]):  # type: ignore[no-untyped-def]
    args = parse_args(argv)
    args.pools, args.rbd_pools = args.pool, args.rbd_pool
    return load_config(args)


def test_flags_round_trip() -> None:
    config = agent_config(rbd_pool_flags([POOL]))
    assert config.rbd_pools == (EXPECTED,)
    assert EXPECTED.hosts() == (("10.0.0.1", 6789), ("10.0.0.2", 3300))
    assert EXPECTED.identity == "rbd://10.0.0.1:6789,10.0.0.2:3300/vms"


def test_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"rbd_pools": [POOL]}))
    assert agent_config(["--config", str(path)]).rbd_pools == (EXPECTED,)


def test_bad_specs_are_refused() -> None:
    with pytest.raises(SystemExit):
        agent_config(["--rbd-pool", "name=ceph,pool=vms"])  # no user, keyring, monitors
    with pytest.raises(ValueError):
        rbd_pool_flags([{**POOL, "keyring": "/etc/a,b"}])  # a comma would split the flag


def test_the_key_comes_from_the_keyring(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keyring = tmp_path / "k"
    keyring.write_text("[client.strato]\n\tkey = AQBx3w5lAAAAABAAq0lvY6Zb2o2lq2Ck8H1wXw==\n")
    pool = RbdPoolConfig(name="c", pool="p", user="strato", keyring=str(keyring), monitors=("m:6789",))
    assert pool.key() == "AQBx3w5lAAAAABAAq0lvY6Zb2o2lq2Ck8H1wXw=="
    from agents.errors import AgentError

    with pytest.raises(AgentError):
        RbdPoolConfig(name="c", pool="p", user="other", keyring=str(keyring), monitors=("m:6789",)).key()
