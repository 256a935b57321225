"""API node configuration: flags, environment variables and an optional JSON config file.

One pydantic-settings model: a flag given on the command line beats ``STRATO_<FIELD>`` in the
environment (JSON for lists and maps), which beats the ``--config`` file; unknown keys in the
file or the flags are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class Config(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STRATO_", extra="forbid", validate_assignment=True)

    listen: str = "127.0.0.1:8080"
    data_dir: Path = Path("./data")
    db: str | None = None          # SQLAlchemy URL; default: SQLite file in data_dir
    max_body: int = 1024 * 1024    # bytes; uploads have their own path
    max_upload: int = 64 * 1024**3  # bytes: the largest image an upload may create (spec §24)
    max_downloads: int = 2          # drive downloads one user may run at once (429 beyond)
    # HTTPS (spec §2): served on tls_listen with tls_cert/tls_key, or a self-signed pair made on first run
    # in <data_dir>/tls/.  `listen` stays plain HTTP (keep it on loopback).
    tls_listen: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    capabilities: dict[str, Any] = Field(default_factory=dict)  # overrides of capabilities defaults
    # Hosts and placement
    local_host: bool = True              # register this machine when no host is registered
    local_virt_type: str | None = None   # kvm | qemu for that host (default: the agent's choice)
    # libvirt name prefix (domains, pools, networks) of the local agents; unset: this installation's
    # own, "strato-<8 hex>-", made once and kept in the host rows (orchestrator/hosts/registry.py)
    agent_prefix: str | None = None
    storage_pools: dict[str, str] = Field(default_factory=dict)  # storage_type → pool name (spec §21)
    # Ceph RBD pools of the local agents (agents/protocol.py --rbd-pool): objects with name, pool, user,
    # keyring (a file: the key never enters a command line or the database), monitors ["HOST:PORT", …]
    rbd_pools: list[dict[str, Any]] = Field(default_factory=list)
    cpu_overcommit: float = 4.0
    mem_overcommit: float = 1.0
    # The virtual sizes of a storage pool's drives add up to at most its capacity times this
    # (1.0: thin drives can all be filled; above 1, the operator watches the pools fill up).
    storage_overcommit: float = Field(default=1.0, gt=0)
    shutdown_window: float = 60.0        # seconds of ACPI presses before a shutdown gives up
    # Clones within one pool: "cow" (copy-on-write where the pool type offers it, flattened in the
    # background at flatten_rate bytes/s, unlimited when unset) or "copy" (the whole volume, the
    # source busy until it is done).
    clone_mode: Literal["cow", "copy"] = "cow"
    flatten_rate: int | None = Field(default=None, gt=0)
    heartbeat: float = 5.0
    # Several API nodes on one PostgreSQL (orchestrator/work/leases.py): a node that has not renewed
    # its lease for this many seconds is dead, and the others take its hosts and jobs over.
    node_lease: float = 10.0
    upload_dir: Path | None = None       # chunked uploads in progress, shared by all API nodes (data_dir/uploads)
    # Finished jobs untouched for this many seconds are removed in the background (running ones never);
    # `strato jobs purge --older-than` does it by hand.
    job_max_age: float = 7 * 24 * 3600.0
    # Consoles (VNC and serial tunnels)
    public_host: str | None = None       # host name in vnc:// and csconsole:// URLs (default: the listen host)
    tunnel_bind: str = "127.0.0.1"       # where tunnel listeners bind (0.0.0.0 to serve other machines)
    tunnel_ports: str = "20000-20999"
    tunnel_idle: float = 600.0           # seconds without a connection before a tunnel closes
    console_token_ttl: float = 120.0     # seconds a browser console link stays valid
    novnc_dir: Path = Path("/usr/share/novnc")  # Debian's novnc package
    allowed_origins: list[str] = Field(default_factory=list)  # extra Origins for the console WebSocket
    # This installation as /locations/ describes it (spec §34); its URLs follow how a client reached it.
    location_id: str = "STRATO"
    location_name: str = "Strato"
    country_code: str = "ZZ"             # ISO 3166 "unknown" until the operator names the country
    frontend_url: str | None = None      # UI links; default: this node's root
    documentation_url: str = "https://docs.cloudsigma.com/en/latest/"

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
        """File < environment (``STRATO_<FIELD>``) < explicit overrides (flags; None: not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if path is None:
            return cls(**given)
        from_file = type("FileConfig", (cls,), {"model_config": {**cls.model_config, "json_file": path}})
        return from_file(**given)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, **_: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets directory: flags, then the environment, then the --config file.
        return init_settings, env_settings, JsonConfigSettingsSource(settings_cls)
