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
    max_upload: int = 64 * 1024**3  # bytes: the largest image an upload may create (spec §24)
    # HTTPS (spec §2): served on tls_listen with tls_cert/tls_key, or a self-signed pair made on first run
    # in <data_dir>/tls/.  `listen` stays plain HTTP (keep it on loopback).
    tls_listen: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
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
    # Consoles (VNC and serial tunnels)
    public_host: str | None = None       # host name in vnc:// and csconsole:// URLs (default: the listen host)
    tunnel_bind: str = "127.0.0.1"       # where tunnel listeners bind (0.0.0.0 to serve other machines)
    tunnel_ports: str = "20000-20999"
    tunnel_idle: float = 600.0           # seconds without a connection before a tunnel closes
    console_token_ttl: float = 120.0     # seconds a browser console link stays valid
    novnc_dir: Path = Path("/usr/share/novnc")  # Debian's novnc package
    allowed_origins: list[str] = field(default_factory=list)  # extra Origins for the console WebSocket

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def tunnel_port_range(self) -> range:
        first, _, last = self.tunnel_ports.partition("-")
        return range(int(first), int(last or first) + 1)

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
        for key in ("data_dir", "novnc_dir"):
            if key in values:
                values[key] = Path(values[key])
        return cls(**values)
