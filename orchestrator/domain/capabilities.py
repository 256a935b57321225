"""The limits of this cloud (spec §31): what validation checks and /capabilities/ shows."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

MiB, GiB, TiB = 2**20, 2**30, 2**40

DEFAULTS: dict[str, Any] = {
    "hosts": {
        family: {
            "cpu": {"min": 250, "max": 64000},
            "cpu_per_smp": {"min": 250, "max": 4000},
            "mem": {"min": 64 * MiB, "max": 256 * GiB},
            "smp": {"min": 1, "max": 32},
        }
        for family in ("amd", "intel")
    },
    "hypervisors": {"kvm": ["amd", "intel"]},
    "drives": {
        storage: {"size": {"min": 1 * MiB, "max": 16 * TiB}, "iops": {"base": 30000, "min": 1, "max": 60000}}
        for storage in ("dssd", "zadara")
    },
    "default_storage_type": "dssd",
    "servers": {"start_methods": ["standard"], "default_start_method": "standard"},
    "snapshots": {"current": 0, "max": 0, "max_per_drive": 0},
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass(frozen=True)
class Capabilities:
    doc: dict[str, Any]

    @classmethod
    def from_config(cls, override: dict[str, Any]) -> Capabilities:
        doc = _merge(DEFAULTS, override)
        for limits in doc["drives"].values():  # deprecated mirrors (spec §31)
            limits["min_size"], limits["max_size"] = limits["size"]["min"], limits["size"]["max"]
        default_family = doc["hypervisors"]["kvm"][0]
        doc["servers"] = {**doc["hosts"][default_family], **doc["servers"]}
        return cls(doc)

    def host(self, cpu_type: str) -> dict[str, Any]:
        return self.doc["hosts"][cpu_type]

    @property
    def cpu_types(self) -> tuple[str, ...]:
        return tuple(self.doc["hypervisors"]["kvm"])

    @property
    def storage_types(self) -> tuple[str, ...]:
        return tuple(self.doc["drives"])

    @property
    def default_storage_type(self) -> str:
        return self.doc["default_storage_type"]

    def drive_size(self, storage_type: str) -> dict[str, int]:
        return self.doc["drives"][storage_type]["size"]
