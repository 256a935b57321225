"""A stand-in host agent for the store tests: newline-delimited JSON-RPC on stdio, no libvirt.

It reports one roomy host with one storage pool and keeps volumes in memory, so drives leave
``creating`` without touching libvirtd.  Domains are never started by these tests.
"""

from __future__ import annotations

import json
import sys
from typing import Any

POOL = "default"
volumes: dict[str, dict[str, Any]] = {}


def facts() -> dict[str, Any]:
    return {"hostname": "fake", "cores": 512, "mhz": 3000, "memory": 2**42, "numa_cells": [],
            "cores_per_numa_node": 512, "virt_types": ["qemu"], "virt_type": "qemu", "uri": "test:///fake",
            "pools": [{"name": POOL, "path": "/nonexistent", "capacity": 2**60, "allocation": 0,
                       "available": 2**60}]}


def volume(params: dict[str, Any]) -> dict[str, Any]:
    name = params["name"]
    vol = {"pool": params.get("pool") or POOL, "name": name, "path": f"/nonexistent/{name}",
           "capacity": params.get("size", 0), "format": "qcow2"}
    volumes[name] = vol
    return vol


METHODS = {
    "ping": lambda p: {"pong": True},
    "host.facts": lambda p: facts(),
    "volume.create": volume,
    "volume.resize": volume,
    "volume.delete": lambda p: volumes.pop(p["name"], None) and {},
    "volume.list": lambda p: list(volumes.values()),
    "domain.list": lambda p: [],
    "domain.stats": lambda p: {},
}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        method = METHODS.get(request.get("method"))
        if method is None:
            reply = {"id": request.get("id"), "error": {"kind": "invalid", "message": "not in the fake agent"}}
        else:
            result = method(request.get("params") or {})
            reply = {"id": request.get("id"), "result": {} if result is None else result}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
