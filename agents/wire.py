"""Every agent message, typed once: what it validates, what it encodes, what it means.

Both sides import this module. The agent's dispatcher (`agents/protocol.py`) converts each
request's `params` into the method's Struct (`METHODS`) and answers with the result Structs;
`AgentClient.call` (`agents/client.py`) encodes Structs as well as plain JSON values. A Struct
encodes its fields in declaration order with nulls included, so `Server(...)` puts the same
bytes on the wire as a dict with the same keys in the same order.

Conventions: sizes in bytes; `pool` is optional everywhere (None: the agent's default pool);
unknown keys are ignored (an older agent tolerates a newer caller). Validation that needs no
host (shapes, ranges, patterns, cross-field rules such as duplicate dev_channels) lives here;
the policy that turns a `Server` into libvirt XML lives in `agents/translate.py`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import msgspec
from msgspec import Meta, Struct

# -- dev_channel limits ---------------------------------------------------------------------


class ChannelLimit(NamedTuple):
    """How many controllers a bus has and how many units each (indexes start at 0), and how many
    drives the bus takes at most (spec §16.1: 1,024 on virtio and scsi, fewer than the channels)."""

    controllers: int
    units: int
    drives: int


# CloudSigma's dev_channel "C:U" per drive bus (spec §16.1).
CHANNEL_LIMITS: dict[str, ChannelLimit] = {
    "ide": ChannelLimit(controllers=2, units=2, drives=4),
    "virtio": ChannelLimit(controllers=171, units=6, drives=1024),
    "scsi": ChannelLimit(controllers=171, units=6, drives=1024),
}
CHANNEL = re.compile(r"([0-9]{1,4}):([0-9]{1,4})")  # ASCII digits only


def parse_channel(device: str, channel: str) -> tuple[int, int]:
    """`"C:U"` → (C, U); ValueError when malformed or out of `device`'s range."""
    match = CHANNEL.fullmatch(channel)
    if match is None:
        raise ValueError(f"dev_channel {channel!r} must be \"controller:unit\"")
    controller, unit = int(match[1]), int(match[2])
    limit = CHANNEL_LIMITS[device]
    if controller >= limit.controllers or unit >= limit.units:
        raise ValueError(f"dev_channel {channel} is out of range for {device} "
                         f"(controller 0..{limit.controllers - 1}, unit 0..{limit.units - 1})")
    return controller, unit


# -- scalar shapes --------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all; ElementTree would write them and libvirt would refuse.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")

Uuid = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")]
Mac = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]
VolumeName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
NetworkName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]+$")]
Size = Annotated[int, Meta(gt=0)]
BootOrder = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=1, le=65535)]
Vni = Annotated[int, Meta(ge=1, le=(1 << 24) - 1)]


class Message(Struct, kw_only=True):
    """Base of every message: keyword construction, fields encoded in declaration order
    (msgspec applies `kw_only` per class, so each subclass repeats it)."""


# -- the server object (domain.render, domain.start) ----------------------------------------


class ServerDrive(Message, kw_only=True):
    uuid: Uuid
    pool: str | None = None
    volume: VolumeName
    media: Literal["disk", "cdrom"]
    device: Literal["virtio", "ide", "scsi"]
    dev_channel: str  # "C:U" within CHANNEL_LIMITS[device]
    boot_order: BootOrder | None = None

    def __post_init__(self) -> None:
        self.uuid = self.uuid.lower()
        parse_channel(self.device, self.dev_channel)

    @property
    def channel(self) -> tuple[int, int]:
        """(controller, unit)."""
        return parse_channel(self.device, self.dev_channel)


class ServerNic(Message, kw_only=True):
    mac: Mac
    model: Literal["virtio", "e1000", "rtl8139"]
    network: str | None = None  # a libvirt network (as network.ensure names it); None: user-mode NIC
    boot_order: BootOrder | None = None

    def __post_init__(self) -> None:
        self.mac = self.mac.lower()


class Server(Message, kw_only=True):
    """One server as the agent runs it; translated to libvirt XML by `agents/translate.py`."""

    uuid: Uuid
    name: str
    cpu: Annotated[int, Meta(ge=1)]  # MHz, whole server
    mem: Annotated[int, Meta(ge=1 << 20)]  # bytes
    smp: Annotated[int, Meta(ge=1, le=255)]
    cpus_instead_of_cores: bool
    enable_numa: bool
    hv_relaxed: bool
    hv_tsc: bool
    cpu_model: Literal["kvm64"] | None = None  # None: the host's CPU (or QEMU's maximum under TCG)
    vnc_password: Annotated[str, Meta(min_length=1)]
    context: bool  # a second serial port for the context server
    drives: list[ServerDrive]
    nics: list[ServerNic]

    def __post_init__(self) -> None:
        self.uuid = self.uuid.lower()
        if NOT_XML.search(self.vnc_password):
            raise ValueError("vnc_password: must be printable text")
        seen: dict[tuple[str, str], str] = {}
        for drive in self.drives:
            controller, unit = drive.channel
            key = (drive.device, f"{controller}:{unit}")
            if key in seen:
                raise ValueError(f"drives: {drive.device} {key[1]} used by both {seen[key]} and {drive.uuid}")
            seen[key] = drive.uuid
        macs = [n.mac for n in self.nics]
        if len(set(macs)) != len(macs):
            raise ValueError("nics: duplicate mac")


# -- the network object (network.ensure) ----------------------------------------------------


class VxlanEndpoint(Message, kw_only=True):
    address: str
    port: Port

    def __post_init__(self) -> None:
        self.address = str(ipaddress.ip_address(self.address))


class Network(Message, kw_only=True):
    """A Strato network; the agent's libvirt network is PREFIX + "net-" + name (`agents/networks.py`)."""

    name: NetworkName
    kind: Literal["nat", "bridge", "isolated"]
    address: str | None = None  # gateway (nat)
    prefix: int | None = None  # (nat)
    bridge: str | None = None  # the operator's bridge (bridge)
    vni: Vni | None = None  # (isolated) VXLAN id; without one the network stays on this host
    peers: list[VxlanEndpoint] = []  # other hosts' VXLAN endpoints (this host's own is skipped)

    def __post_init__(self) -> None:
        if self.kind == "nat":
            try:
                ipaddress.ip_interface(f"{self.address}/{self.prefix}")
            except ValueError:
                raise ValueError("nat needs address and prefix") from None
        if self.kind == "bridge" and not self.bridge:
            raise ValueError("bridge: the operator's bridge is required")


# -- params, one Struct per method ----------------------------------------------------------


class NoParams(Message, kw_only=True):
    pass


class VolumeCreate(Message, kw_only=True):
    pool: str | None = None
    name: VolumeName
    size: Size


class VolumeImport(Message, kw_only=True):
    """Source raw or qcow2 (detected from content), stored as qcow2."""

    pool: str | None = None
    name: VolumeName
    source_path: str


class VolumeClone(Message, kw_only=True):
    """libvirt clone of `source`, then grown to `size`."""

    pool: str | None = None
    source: VolumeName
    name: VolumeName
    size: Size | None = None


class VolumeCowClone(Message, kw_only=True):
    """Copy-on-write clone in a directory pool: `source`'s image as it is now becomes the read-only
    `base` (a new name for the same file), `name` becomes a qcow2 overlay on it, grown to `size`,
    and, unless `keep_source` (a library drive, which nobody writes), `source` becomes another
    overlay on it, so nothing written to either side later is seen by the other. An existing
    `base` is reused (a library drive's base, or a retry after an interruption)."""

    pool: str | None = None
    source: VolumeName
    name: VolumeName
    base: VolumeName
    size: Size | None = None
    keep_source: bool = False


class VolumeFlatten(Message, kw_only=True):
    """Copy everything the volume reads from its backing chain into itself, so it needs no base:
    a running guest's disk by libvirt's block pull, a volume no guest uses by `qemu-img convert`
    into a new file that replaces it. `rate` caps the bytes per second (None: unlimited). Ends
    with an `invalid` error ("cancelled") when `volume.flatten_cancel` or `volume.delete` stopped it."""

    pool: str | None = None
    name: VolumeName
    rate: Size | None = None


class VolumeFlattenCancel(Message, kw_only=True):
    """volume.flatten_cancel: stop the volume's flatten, if one runs (the volume stays as it was)."""

    pool: str | None = None
    name: VolumeName


class VolumeResize(Message, kw_only=True):
    """Grow only (smaller → invalid)."""

    pool: str | None = None
    name: VolumeName
    size: Size


class VolumeDelete(Message, kw_only=True):

    pool: str | None = None
    name: VolumeName


class VolumeExport(Message, kw_only=True):
    """The volume written as a raw image to the file `path` on the host (replaced if present)."""

    pool: str | None = None
    name: VolumeName
    path: str


class VolumeList(Message, kw_only=True):

    pool: str | None = None


class DomainSpec(Message, kw_only=True):
    """domain.render (no libvirt call) and domain.start (defines persistently, replacing a
    stopped definition, then starts; a bad spec is refused before anything is defined)."""

    server: Server


class DomainRef(Message, kw_only=True):
    """domain.stop (virDomainDestroy), shutdown (one ACPI power-button press), reset,
    undefine (destroys first; volumes stay), xml (live XML). Unknown uuids → notfound."""

    uuid: Uuid


class DomainStatsQuery(Message, kw_only=True):
    uuids: list[Uuid] | None = None  # None: every running domain of this agent


class NetworkEnsure(Message, kw_only=True):
    """Defines, starts and autostarts the network when missing (an existing definition is kept,
    so attached guests stay); for an isolated network with a vni, creates the VXLAN device and
    sets its flood list to `peers` (idempotent, stale peers removed)."""

    network: Network


class NetworkReserve(Message, kw_only=True):
    """DHCP reservation MAC → IP on a nat network (an older entry of that MAC or IP is replaced).
    `network` is Strato's name (without PREFIX + "net-")."""

    network: NetworkName
    mac: Mac
    ip: str

    def __post_init__(self) -> None:
        self.mac = self.mac.lower()
        try:
            self.ip = str(ipaddress.ip_address(self.ip))
        except ValueError:
            raise ValueError(f"ip: not an address: {self.ip!r}") from None


class NetworkRelease(Message, kw_only=True):
    """The MAC's reservation removed (none: no-op)."""

    network: NetworkName
    mac: Mac

    def __post_init__(self) -> None:
        self.mac = self.mac.lower()


class NetworkRemove(Message, kw_only=True):
    """Destroyed, undefined, VXLAN device deleted."""

    network: NetworkName


# -- results --------------------------------------------------------------------------------


class MigrateIn(Message, kw_only=True):
    """Target side of a live migration: render the domain for this host, create the volumes
    copy-storage fills (same names and sizes as on the source)."""

    server: Server
    create: list[VolumeCreate] = []


class MigrateOut(Message, kw_only=True):
    """Source side: migrate the running domain peer to peer to the prepared target."""

    uuid: Uuid
    target_uri: str       # the target's libvirtd, as this host's libvirtd reaches it
    target_address: str   # where QEMU streams the migration (and NBD copies drives) to
    target_xml: str       # what migrate.prepare answered
    copy_drives: list[Uuid] = []  # drives on local pools: copied (NON_SHARED_DISK)
    max_downtime_ms: int | None = None


class MigrateDone(Message, kw_only=True):
    """Target side, after the migration: serve the guest's context port, describe the domain."""

    uuid: Uuid
    context: bool


class Empty(Message, kw_only=True):
    pass


class ContextSet(Message, kw_only=True):
    """context.set: the server's context document (spec §33.1) as the API node renders it now;
    the agent answers the guest's ttyS1 requests from the newest one (`agents/context.py`)."""

    uuid: Uuid
    document: dict[str, Any]

    def __post_init__(self) -> None:
        self.uuid = self.uuid.lower()


class Pong(Message, kw_only=True):
    pong: bool = True


class Volume(Message, kw_only=True):
    pool: str
    name: str
    path: str  # a file; for kind "rbd" the image as "ceph-pool/image" (read it with volume.export)
    capacity: int  # virtual size
    format: str | None
    kind: Literal["file", "rbd"] = "file"
    backing: str | None = None  # the path of the image it is an overlay on (copy-on-write clones)


class CowCloned(Message, kw_only=True):
    source: Volume
    clone: Volume
    base: Volume


class Vnc(Message, kw_only=True):
    host: str
    port: int


class DomainInfo(Message, kw_only=True):
    uuid: str
    name: str
    state: str  # a CloudSigma server status
    active_since: str | None
    vnc: Vnc | None
    console_log: str
    console_socket: str  # ttyS0's unix socket


class Xml(Message, kw_only=True):
    xml: str


class BlockIo(Message, kw_only=True):
    bytes_read: int = 0
    bytes_written: int = 0
    count_read: int = 0
    count_written: int = 0
    count_flush: int = 0
    total_time_ns_read: int = 0
    total_time_ns_write: int = 0
    total_time_ns_flush: int = 0


class NetIo(Message, kw_only=True):
    """The guest's view; stays 0 for user-mode NICs, which have no host interface."""

    bytes_recv: int = 0
    bytes_sent: int = 0
    packets_recv: int = 0
    packets_sent: int = 0


class DriveStats(Message, kw_only=True):
    io: BlockIo


class NicStats(Message, kw_only=True):
    io: NetIo
    ip_v4: str | None = None  # the DHCP lease the NIC's libvirt network gave its MAC


class DomainStats(Message, kw_only=True):
    active_since: str | None
    drives: dict[str, DriveStats]  # by drive uuid
    nics: dict[str, NicStats]  # by mac


class NumaCellFacts(Message, kw_only=True):
    id: int
    cpus: list[int]
    memory: int


class PoolFacts(Message, kw_only=True):
    """A pool the host can use now (an RBD pool whose cluster it cannot reach is left out).
    `path` names the storage itself: hosts reporting one name and path share the pool's volumes
    (a shared directory's real path; for RBD "rbd://<monitors>/<ceph pool>")."""

    name: str
    path: str
    capacity: int
    allocation: int
    available: int
    kind: Literal["dir", "rbd"] = "dir"


class MigrationEndpoint(Message, kw_only=True):
    uri: str      # this host's libvirtd as other hosts' libvirtd reach it (qemu+ssh://… or qemu+tcp://…)
    address: str  # this host's address for QEMU's migration stream


class MigrationTarget(Message, kw_only=True):
    xml: str  # the domain as this host would define it (its names and paths)


class HostFacts(Message, kw_only=True):
    hostname: str
    cores: int
    mhz: int  # per core
    memory: int
    numa_cells: list[NumaCellFacts]
    virt_types: list[str]
    cores_per_numa_node: int
    virt_type: str
    uri: str
    pools: list[PoolFacts]
    vxlan: VxlanEndpoint | None
    unreachable_pools: list[str] = []  # configured RBD pools whose Ceph cluster this host cannot reach
    migration: MigrationEndpoint | None = None  # None: this host takes no live migrations


class NetworkEnsured(Message, kw_only=True):
    name: str  # the libvirt network, PREFIX + "net-" + name: what ServerNic.network names
    bridge: str | None
    kind: str


class Reserved(Message, kw_only=True):
    pushed: bool  # False on an operator's bridge (its DHCP is the operator's)


class DhcpReservation(Message, kw_only=True):
    mac: str
    ip: str


class NetworkInfo(Message, kw_only=True):
    name: str  # libvirt's
    bridge: str | None
    active: bool
    hosts: list[DhcpReservation]


# -- the method table -----------------------------------------------------------------------


class Method(NamedTuple):
    params: type[Message]
    result: Any  # a type, for documentation and for callers that want to decode


METHODS: dict[str, Method] = {
    "ping": Method(NoParams, Pong),
    "host.facts": Method(NoParams, HostFacts),
    "volume.create": Method(VolumeCreate, Volume),
    "volume.import": Method(VolumeImport, Volume),
    "volume.clone": Method(VolumeClone, Volume),
    "volume.cow_clone": Method(VolumeCowClone, CowCloned),
    "volume.flatten": Method(VolumeFlatten, Volume),
    "volume.flatten_cancel": Method(VolumeFlattenCancel, Empty),
    "volume.resize": Method(VolumeResize, Volume),
    "volume.delete": Method(VolumeDelete, Empty),
    "volume.export": Method(VolumeExport, Empty),
    "volume.list": Method(VolumeList, list[Volume]),
    "domain.render": Method(DomainSpec, Xml),
    "domain.start": Method(DomainSpec, DomainInfo),
    "domain.stop": Method(DomainRef, Empty),
    "domain.shutdown": Method(DomainRef, Empty),
    "domain.reset": Method(DomainRef, Empty),
    "domain.undefine": Method(DomainRef, Empty),
    "domain.list": Method(NoParams, list[DomainInfo]),
    "domain.stats": Method(DomainStatsQuery, dict[str, DomainStats]),
    "domain.xml": Method(DomainRef, Xml),
    "network.ensure": Method(NetworkEnsure, NetworkEnsured),
    "network.reserve": Method(NetworkReserve, Reserved),
    "network.release": Method(NetworkRelease, Empty),
    "network.remove": Method(NetworkRemove, Empty),
    "network.list": Method(NoParams, list[NetworkInfo]),
    "context.set": Method(ContextSet, Empty),
    "migrate.prepare": Method(MigrateIn, MigrationTarget),
    "migrate.out": Method(MigrateOut, Empty),
    "migrate.done": Method(MigrateDone, DomainInfo),
    "migrate.abort": Method(MigrateIn, Empty),
}


# -- events ---------------------------------------------------------------------------------


class DomainLifecycle(Message, kw_only=True):
    """Pushed for every libvirt lifecycle event of the agent's domains. `state` is a CloudSigma
    status: running (started, resumed), stopped (`reason` shutdown|destroyed|crashed|failed|…),
    stopping (the guest finished its shutdown, QEMU is exiting), paused (suspended, crashed,
    pmsuspended), or None for configuration-only events (`reason` defined / undefined)."""

    uuid: str
    name: str
    state: str | None
    reason: str


EVENTS: dict[str, type[Message]] = {"domain.lifecycle": DomainLifecycle}


# -- conversion -----------------------------------------------------------------------------

T = TypeVar("T")


def convert(raw: Any, kind: type[T], where: str = "params") -> T:
    """`raw` (decoded JSON) as `kind`; msgspec.ValidationError names the path from `where`."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as err:
        message, _, path = str(err).partition(" - at `$")
        path = re.sub(r"\[(\d+)\]", r".\1", path.rstrip("`"))
        raise msgspec.ValidationError(f"{where}{path}: {message}") from None


def to_builtins(value: Any) -> Any:
    """A `json.dumps` default: Structs become dicts (field order kept, nulls included)."""
    if isinstance(value, Struct):
        return msgspec.to_builtins(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
