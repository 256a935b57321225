"""API node configuration: flags, environment variables and an optional JSON config file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def default_data_dir() -> Path:
    return Path("./data")


@dataclass
class Config:
    listen: str = "127.0.0.1:8080"
    data_dir: Path = field(default_factory=default_data_dir)
    db: str | None = None          # SQLAlchemy URL; default: SQLite file in data_dir
    max_body: int = 1024 * 1024    # bytes; uploads have their own path
    capabilities: dict[str, Any] = field(default_factory=dict)  # overrides of capabilities defaults
    # Hosts and placement
    local_host: bool = True              # register this machine when no host is registered
    local_virt_type: str | None = None   # kvm | qemu for that host (default: the agent's choice)
    agent_prefix: str = "strato-"        # libvirt domain / pool name prefix of the local agent
    storage_pools: dict[str, str] = field(default_factory=dict)  # storage_type → pool name (spec §21)
    cpu_overcommit: float = 4.0
    mem_overcommit: float = 1.0
    shutdown_window: float = 60.0        # seconds of ACPI presses before a shutdown gives up
    heartbeat: float = 5.0

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{(self.data_dir / 'strato.db').resolve()}"

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> Config:
        """File < environment (``STRATO_<FIELD>``) < explicit overrides (flags)."""
        values: dict[str, Any] = {}
        if path is not None:
            values.update(json.loads(path.read_text()))
        for f in fields(cls):
            env = os.environ.get(f"STRATO_{f.name.upper()}")
            if env is not None:
                values[f.name] = env if f.type in ("str", "str | None", "Path") else json.loads(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)
