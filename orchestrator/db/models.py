"""The store: SQLAlchemy 2 typed models.  Every resource row has an owner.

NICs live as JSON on their server (they have no collection of their own,
spec §17); drive attachments and tag links are tables because both sides are
queried (``mounted_on``, ``/tags/{uuid}/servers/``).
"""

from __future__ import annotations

import uuid as uuidlib
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, TypeDecorator, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON, int: BigInteger}


class User(Base):
    __tablename__ = "users"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    clone_naming: Mapped[str] = mapped_column(String(16), default="NONE")
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The account's global context (spec §33.4): str → str, part of every server's context.
    global_context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Upstream profile keys without behaviour here (first_name, language, …): accepted and echoed (spec §36).
    profile: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by ``strato users disable``: every credential of the user is refused (its servers stay as they are).
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Quota(Base):
    """What one user may hold, set by the operator (``strato quotas set``); null: no limit."""

    __tablename__ = "quotas"
    user_uuid: Mapped[str] = mapped_column(ForeignKey("users.uuid", ondelete="CASCADE"), primary_key=True)
    servers: Mapped[int | None] = mapped_column(BigInteger, nullable=True)   # how many
    cpu: Mapped[int | None] = mapped_column(BigInteger, nullable=True)       # MHz over all servers
    mem: Mapped[int | None] = mapped_column(BigInteger, nullable=True)       # bytes over all servers
    storage: Mapped[int | None] = mapped_column(BigInteger, nullable=True)   # bytes over all drives
    tunnels: Mapped[int | None] = mapped_column(BigInteger, nullable=True)   # open consoles (VNC, serial)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_uuid: Mapped[str] = mapped_column(ForeignKey("users.uuid", ondelete="CASCADE"), index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class TagLink(Base):
    __tablename__ = "tag_links"
    tag_uuid: Mapped[str] = mapped_column(ForeignKey("tags.uuid", ondelete="CASCADE"), primary_key=True)
    res_uuid: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    res_type: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer, default=0)


class Tag(Base):
    __tablename__ = "tags"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    owner_uuid: Mapped[str] = mapped_column(ForeignKey("users.uuid"), index=True)
    name: Mapped[str] = mapped_column(String(1024))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    links: Mapped[list[TagLink]] = relationship(
        cascade="all, delete-orphan", order_by=TagLink.position, lazy="raise"
    )


def _job_links(owner: str) -> Any:
    return relationship("JobLink", primaryjoin=f"foreign(JobLink.res_uuid) == {owner}.uuid",
                        order_by="JobLink.job_uuid", viewonly=True, lazy="raise")


def _tag_links(owner: str) -> Any:
    # Tags are a polymorphic relation (servers, drives, ips, vlans): no foreign key on res_uuid.
    return relationship(
        TagLink,
        primaryjoin=f"foreign(TagLink.res_uuid) == {owner}.uuid",
        order_by=TagLink.tag_uuid,
        viewonly=True,
        lazy="raise",
    )


class ServerDrive(Base):
    """One entry of a server's ``drives`` list, in submission order."""

    __tablename__ = "server_drives"
    server_uuid: Mapped[str] = mapped_column(ForeignKey("servers.uuid", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    drive_uuid: Mapped[str] = mapped_column(ForeignKey("drives.uuid"), index=True)
    device: Mapped[str] = mapped_column(String(8))
    dev_channel: Mapped[str] = mapped_column(String(16))
    boot_order: Mapped[int | None] = mapped_column(Integer)
    drive: Mapped[Drive] = relationship(lazy="raise")


class Server(Base):
    __tablename__ = "servers"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    owner_uuid: Mapped[str] = mapped_column(ForeignKey("users.uuid"), index=True)
    name: Mapped[str] = mapped_column(String(1024))
    cpu: Mapped[int]
    mem: Mapped[int]
    smp: Mapped[int]
    smp_auto: Mapped[bool]  # smp follows cpu until a client sets it (spec §11 rule 4)
    vnc_password: Mapped[str] = mapped_column(String(64))
    cpu_type: Mapped[str] = mapped_column(String(16))
    hypervisor: Mapped[str] = mapped_column(String(16))
    cpu_model: Mapped[str | None] = mapped_column(String(32))
    cpus_instead_of_cores: Mapped[bool]
    enable_numa: Mapped[bool]
    hv_relaxed: Mapped[bool]
    hv_tsc: Mapped[bool]
    context: Mapped[bool]
    auto_start: Mapped[bool]
    is_grey: Mapped[bool]
    allocation_pool: Mapped[str | None] = mapped_column(String(256))
    meta: Mapped[dict[str, Any]]
    requirements: Mapped[list[Any]]
    nics: Mapped[list[Any]]
    gpus: Mapped[list[Any]]
    epcs: Mapped[list[Any]]
    pubkeys: Mapped[list[Any]]
    status: Mapped[str] = mapped_column(String(16), default="stopped")
    # Where it runs. A server with a host holds a claim of its cpu and mem there (released on stop).
    host: Mapped[str | None] = mapped_column(String(64), index=True)
    avoid: Mapped[list[Any]] = mapped_column(default=list)  # the ?avoid= of its start: a migration honours it
    active_since: Mapped[datetime | None]
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    drive_links: Mapped[list[ServerDrive]] = relationship(
        cascade="all, delete-orphan", order_by=ServerDrive.position, lazy="raise"
    )
    tag_links: Mapped[list[TagLink]] = _tag_links("Server")
    # The agent's latest statistics, attached for output by the API; never stored.
    live: ClassVar[dict[str, Any] | None] = None
    job_links: Mapped[list[JobLink]] = _job_links("Server")


class VolumeBase(Base):
    """A read-only image that copy-on-write overlays read through to (a drive's image as it was
    when it was cloned). Its users are the drives and bases whose ``base_uuid`` / ``parent_uuid``
    name it; one that has none is deleted (``orchestrator/domain/cow.py``)."""

    __tablename__ = "volume_bases"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    host: Mapped[str] = mapped_column(String(64))
    pool: Mapped[str | None] = mapped_column(String(256))
    volume: Mapped[str] = mapped_column(String(256))
    parent_uuid: Mapped[str | None] = mapped_column(String(36), index=True)  # the base it is an overlay on
    origin_uuid: Mapped[str | None] = mapped_column(String(36), index=True)  # the library drive it shares
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Drive(Base):
    __tablename__ = "drives"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    # NULL for library drives (their catalogue entry is a LibDrive row of the same uuid).
    owner_uuid: Mapped[str | None] = mapped_column(ForeignKey("users.uuid"), index=True)
    name: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int]
    media: Mapped[str] = mapped_column(String(8))
    storage_type: Mapped[str] = mapped_column(String(16))
    affinities: Mapped[list[Any]]
    allow_multimount: Mapped[bool]
    iops: Mapped[int | None]
    meta: Mapped[dict[str, Any]]
    licenses: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="creating")
    avoid: Mapped[list[Any]] = mapped_column(default=list)  # ?avoid= kept for the scheduler
    host: Mapped[str | None] = mapped_column(String(64))     # storage host whose agent holds the volume
    pool: Mapped[str | None] = mapped_column(String(256))    # storage pool holding the volume
    volume: Mapped[str | None] = mapped_column(String(256))  # volume name inside that pool
    # A copy-on-write clone's volume (and its source's) is a qcow2 overlay on this read-only base
    # until it is flattened (orchestrator/work/flatten.py); None: a standalone volume.
    base_uuid: Mapped[str | None] = mapped_column(String(36), index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    attachments: Mapped[list[ServerDrive]] = relationship(
        order_by=ServerDrive.server_uuid, lazy="raise", viewonly=True
    )
    tag_links: Mapped[list[TagLink]] = _tag_links("Drive")
    job_links: Mapped[list[JobLink]] = _job_links("Drive")


class LibDrive(Base):
    """The catalogue attributes of a library drive (spec §23); its volume is the ownerless Drive."""

    __tablename__ = "libdrives"
    uuid: Mapped[str] = mapped_column(ForeignKey("drives.uuid", ondelete="CASCADE"), primary_key=True)
    arch: Mapped[str] = mapped_column(String(8))
    category: Mapped[list[Any]] = mapped_column(default=list)
    description: Mapped[str] = mapped_column(String(4096), default="")
    distribution: Mapped[str | None] = mapped_column(String(256))
    favourite: Mapped[bool] = mapped_column(default=False)
    image_type: Mapped[str] = mapped_column(String(16))  # preinst | install
    install_notes: Mapped[str] = mapped_column(String(8192), default="")
    os: Mapped[str] = mapped_column(String(64))
    paid: Mapped[bool] = mapped_column(default=False)
    url: Mapped[str] = mapped_column(String(1024), default="")
    version: Mapped[str | None] = mapped_column(String(256))
    checksum: Mapped[str] = mapped_column(String(64), index=True)  # sha256 of the imported file
    drive: Mapped[Drive] = relationship(lazy="raise")


class Host(Base):
    """A hypervisor host and how to reach its agent (DESIGN.md "Hosts and placement")."""

    __tablename__ = "hosts"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(512))  # "local" or "ssh://user@host:port"
    key_file: Mapped[str | None] = mapped_column(String(1024))
    known_hosts: Mapped[str | None] = mapped_column(String(1024))
    agent_command: Mapped[list[Any]]  # argv of `agent --stdio` on that host
    state: Mapped[str] = mapped_column(String(16), default="down")  # up | down | draining
    facts: Mapped[dict[str, Any]] = mapped_column(default=dict)    # host.facts of the last connection
    last_heartbeat: Mapped[datetime | None]
    created: Mapped[datetime] = mapped_column(default=utcnow)
    # Placement reads these, not the facts: capacity before overcommit (MHz, bytes), set with the
    # facts; and the cpu/mem its servers claim (servers.host), kept by the scheduler's claims and
    # releases and recounted when the host reconnects (domain/placement.py).
    cpu_capacity: Mapped[int] = mapped_column(default=1000, server_default="1000")
    mem_capacity: Mapped[int] = mapped_column(default=0, server_default="0")
    cpu_used: Mapped[int] = mapped_column(default=0, server_default="0")
    mem_used: Mapped[int] = mapped_column(default=0, server_default="0")

    @validates("facts")
    def _capacity(self, _key: str, facts: dict[str, Any]) -> dict[str, Any]:
        self.cpu_capacity, self.mem_capacity = host_capacity(facts)
        return facts


def host_capacity(facts: dict[str, Any]) -> tuple[int, int]:
    """(MHz, bytes) a host offers before overcommit, from its facts."""
    return int(facts.get("cores", 1) * facts.get("mhz", 1000)), int(facts.get("memory", 0))


class JobLink(Base):
    """An object a job touches (its ``jobs`` list links back here)."""

    __tablename__ = "job_links"
    job_uuid: Mapped[str] = mapped_column(ForeignKey("jobs.uuid", ondelete="CASCADE"), primary_key=True)
    res_uuid: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Job(Base):
    """A long operation with progress (spec §32): drive_clone and server_clone as upstream, and every
    other operation that runs after its request answered (server_start, drive_create, drive_resize,
    drive_upload), so that a failure has a place to say why (issue 11)."""

    __tablename__ = "jobs"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    owner_uuid: Mapped[str] = mapped_column(ForeignKey("users.uuid"), index=True)
    parent_uuid: Mapped[str | None] = mapped_column(ForeignKey("jobs.uuid", ondelete="CASCADE"), index=True)
    operation: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="started", index=True)  # started | success | failed
    progress: Mapped[int] = mapped_column(Integer, default=0)
    resources: Mapped[list[Any]]  # URIs of the objects involved, as the API shows them
    source_uuid: Mapped[str | None] = mapped_column(String(36))  # what a clone or upload reads / fills
    target_uuid: Mapped[str | None] = mapped_column(String(36))  # the copy a clone makes
    error: Mapped[str | None] = mapped_column(Text)  # why a failed job failed, for its owner to read
    params: Mapped[dict[str, Any] | None]  # what an operator queued it with (server_migrate: the target host)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
    children: Mapped[list[Job]] = relationship(order_by="Job.created", lazy="raise", cascade="all, delete-orphan")


class Network(Base):
    """An operator's public network: the subnet, its gateway, the DHCP pool (spec §25, issue 7)."""

    __tablename__ = "networks"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    subnet: Mapped[str] = mapped_column(String(64))         # CIDR
    gateway: Mapped[str] = mapped_column(String(64))
    range_first: Mapped[str] = mapped_column(String(64))    # addresses handed out for conf "dhcp"
    range_last: Mapped[str] = mapped_column(String(64))
    nameservers: Mapped[list[Any]] = mapped_column(default=list)
    bridge: Mapped[str | None] = mapped_column(String(15))  # an operator's bridge instead of libvirt NAT
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Ip(Base):
    """An address in use: granted to a user (``subscription`` set) or leased by DHCP to a server's NIC
    while it runs (``subscription`` null, ``mac`` set).  The address is the uuid."""

    __tablename__ = "ips"
    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    network_name: Mapped[str] = mapped_column(ForeignKey("networks.name"), index=True)
    owner_uuid: Mapped[str] = mapped_column(ForeignKey("users.uuid"), index=True)
    subscription: Mapped[int | None] = mapped_column(Integer)
    server_uuid: Mapped[str | None] = mapped_column(String(36), index=True)  # static conf or live lease
    mac: Mapped[str | None] = mapped_column(String(17))                      # leases: the NIC holding it
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    network: Mapped[Network] = relationship(lazy="raise")
    tag_links: Mapped[list[TagLink]] = _tag_links("Ip")


class VlanMember(Base):
    """A server with a NIC on a VLAN (the VLAN's ``servers``), kept with the server's ``nics``."""

    __tablename__ = "vlan_members"
    vlan_uuid: Mapped[str] = mapped_column(ForeignKey("vlans.uuid", ondelete="CASCADE"), primary_key=True)
    server_uuid: Mapped[str] = mapped_column(ForeignKey("servers.uuid", ondelete="CASCADE"), primary_key=True,
                                             index=True)


class Vlan(Base):
    """A private network; ``owner_uuid`` null while the operator has not assigned it (spec §26)."""

    __tablename__ = "vlans"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    owner_uuid: Mapped[str | None] = mapped_column(ForeignKey("users.uuid"), index=True)
    tag: Mapped[int] = mapped_column(Integer, unique=True)  # VXLAN VNI underneath (bottom_vlan_tag)
    subscription: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    members: Mapped[list[VlanMember]] = relationship(order_by=VlanMember.server_uuid, lazy="raise",
                                                     cascade="all, delete-orphan")
    tag_links: Mapped[list[TagLink]] = _tag_links("Vlan")


class KeyPair(Base):
    """An SSH key pair (spec §35); servers list their uuids in ``pubkeys``.  ``private_key`` is
    null when only the public half was given."""

    __tablename__ = "keypairs"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    owner_uuid: Mapped[str] = mapped_column(ForeignKey("users.uuid"), index=True)
    name: Mapped[str] = mapped_column(String(1024))
    public_key: Mapped[str] = mapped_column(Text)        # the OpenSSH line
    private_key: Mapped[str | None] = mapped_column(Text)  # PEM or OpenSSH private format
    fingerprint: Mapped[str] = mapped_column(String(64))  # MD5 of the key blob, colon-separated hex
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    tag_links: Mapped[list[TagLink]] = _tag_links("KeyPair")


# --- several API nodes on one database (issue 13) -----------------------------------------------------------
# What any node must see of what another node made: cookie sessions, one-time tokens and links, uploads in
# progress, and which node runs what (its lease).  Every expiry is enforced in the query that reads the row.


class WebSession(Base):
    """A cookie login (``sessionid``, spec §3) with its CSRF token; the id is kept as its SHA-256."""

    __tablename__ = "web_sessions"
    sid_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_uuid: Mapped[str] = mapped_column(ForeignKey("users.uuid", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    expires: Mapped[datetime] = mapped_column(index=True)


class OneTimeToken(Base):
    """A short-lived secret (its SHA-256): an ``async_auth`` cookie, a browser console token, a chunk
    upload link.  ``data`` is what it grants, by ``kind``."""

    __tablename__ = "one_time_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # async_auth | console | chunk
    subject: Mapped[str] = mapped_column(String(64), index=True)  # the user, server or drive it is about
    data: Mapped[dict[str, Any]]
    created: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column(index=True)


class UploadState(Base):
    """A chunked upload in progress (spec §24.2): the drive's chunk file waits in the shared upload
    directory; ``importing_node`` is set while a node imports the complete file."""

    __tablename__ = "uploads"
    drive_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_uuid: Mapped[str] = mapped_column(String(36), index=True)
    size: Mapped[int]
    finished: Mapped[bool] = mapped_column(default=False)
    importing_node: Mapped[str | None] = mapped_column(String(64))


class UploadPiece(Base):
    """A byte range of an upload that has arrived."""

    __tablename__ = "upload_pieces"
    drive_uuid: Mapped[str] = mapped_column(ForeignKey("uploads.drive_uuid", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(primary_key=True)
    length: Mapped[int]


class ApiNode(Base):
    """A running API node: alive while ``expires`` (which it renews) is in the future."""

    __tablename__ = "api_nodes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column(index=True)


class HostLease(Base):
    """The one node that polls a host's statistics, hears its events and reconciles its domains."""

    __tablename__ = "host_leases"
    host: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(64))
    expires: Mapped[datetime]
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)  # domain.stats by server, as last polled


class JobLease(Base):
    """The node that runs a started job; another node takes it over once that node's lease expired."""

    __tablename__ = "job_leases"
    job_uuid: Mapped[str] = mapped_column(ForeignKey("jobs.uuid", ondelete="CASCADE"), primary_key=True)
    node: Mapped[str] = mapped_column(String(64), index=True)
