"""/servers/: the server field table and its handlers (spec §10–§14)."""

from __future__ import annotations

from functools import partial
from typing import Any

from aiohttp import web
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.api.fields import NAME, Bool, Field, Int, Nested, Output, Ref, RefList, Resource, Str, StrList
from orchestrator.api.resource import (
    AfterCommit,
    caller,
    collection_views,
    created,
    delete_views,
    for_each,
    get_owned,
    objects_of,
    owned_row,
    owned_rows,
    path,
    read_json,
    read_one,
    respond,
    session,
    validated,
)
from orchestrator.api.rows import Rows
from orchestrator.api.standard import (
    acl_fields,
    jobs_field,
    meta_field,
    owner_field,
    resource_uri_field,
    tags_field,
    uuid_field,
)
from orchestrator.db.models import Server, new_uuid
from orchestrator.domain.drives import refresh_mount_status
from orchestrator.domain.errors import DomainError, invalid
from orchestrator.domain.servers import Bulk, delete_servers, write_server
from orchestrator.domain.uris import link
from orchestrator.web.auth import confirms_caller
from orchestrator.web.keys import CAPABILITIES, WORK
from orchestrator.work.background import Work

DRIVE_IO = ("bytes_read", "bytes_written", "count_flush", "count_read", "count_written", "total_time_ns_flush",
            "total_time_ns_read", "total_time_ns_write")
NIC_IO = ("bytes_recv", "bytes_sent", "packets_recv", "packets_sent")


def attach_stats(work: Work, servers: list[Server]) -> None:
    for server in servers:
        server.live = work.watch.stats.get(server.uuid)


def _drive_runtime(server: Server, drive_uuid: str) -> dict[str, Any] | None:
    if server.status == "stopped":
        return None
    io = ((server.live or {}).get("drives", {}).get(drive_uuid) or {}).get("io", {})
    return {"io": {key: io.get(key, 0) for key in DRIVE_IO}}


def _nic_runtime(server: Server, nic: dict[str, Any]) -> dict[str, Any] | None:
    if server.status == "stopped":
        return None
    io = ((server.live or {}).get("nics", {}).get(nic["mac"]) or {}).get("io", {})
    # The address the NIC holds: its DHCP lease as the host sees it, else the reservation made at start.
    address = ((server.live or {}).get("nics", {}).get(nic["mac"]) or {}).get("ip_v4") or nic.get("lease")
    return {"interface_type": "private" if nic["vlan"] else "public", "io": {key: io.get(key, 0) for key in NIC_IO},
            "ip_v4": address and link("ips", address), "ip_v6": None}


def _attachments(server: Server) -> list[dict[str, Any]]:
    return [{"boot_order": d.boot_order, "dev_channel": d.dev_channel, "device": d.device,
             "drive": link("drives", d.drive_uuid), "runtime": _drive_runtime(server, d.drive_uuid)}
            for d in server.drive_links]


def _nics(server: Server) -> list[dict[str, Any]]:
    def conf(c: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if c is None else {"conf": c["conf"], "ip": c["ip"] and link("ips", c["ip"])}

    return [{"boot_order": n["boot_order"], "ip_v4_conf": conf(n["ip_v4_conf"]), "ip_v6_conf": conf(n["ip_v6_conf"]),
             "mac": n["mac"], "model": n["model"], "runtime": _nic_runtime(server, n),
             "vlan": n["vlan"] and link("vlans", n["vlan"])} for n in server.nics]


def _runtime(server: Server) -> dict[str, Any] | None:
    """Present while the server is not stopped (spec §10.3); counters from the agent's stats."""
    if server.status == "stopped":
        return None
    return {"active_since": server.active_since.isoformat() if server.active_since else None,
            "nics": [{"mac": n["mac"], **_nic_runtime(server, n)} for n in server.nics]}  # type: ignore[dict-item]


DRIVE_ATTACHMENT = (
    Field("boot_order", Int(minimum=1), nullable=True, default=None, help="Drive boot order"),
    Field("dev_channel", Str(max_length=16), required=True,
          help="Device channel in format {controller:unit} ex. 0:1, 0:2, etc."),
    Field("device", Str(), required=True, choices=("ide", "virtio", "scsi"), help="Device emulation type"),
    Field("drive", Ref("drives"), required=True, help="Drive UUID"),
    Field("runtime", Output(), readonly=True, help="Attached drive's runtime information"),
)
IP_CONF = (
    Field("conf", Str(), default="dhcp", choices=("dhcp", "static", "manual"), help="Configuration type",
          schema={"required": True}),
    Field("ip", Ref("ips"), nullable=True, default=None, help="An IP address reference"),
)
NIC = (
    Field("boot_order", Int(minimum=1), nullable=True, default=None, help="Device boot order"),
    Field("ip_v4_conf", Nested(IP_CONF), nullable=True, default=None, help="Public IPv4 configuration"),
    Field("ip_v6_conf", Nested(IP_CONF), nullable=True, default=None, help="Public IPv6 configuration"),
    Field("mac", Str(max_length=17), nullable=True, help="MAC address of the server NIC", schema={"required": True}),
    Field("model", Str(), nullable=True, choices=("rtl8139", "e1000", "virtio"), help="Model of NIC"),
    Field("runtime", Output(), readonly=True, help="NIC runtime information"),
    Field("vlan", Ref("vlans"), nullable=True, default=None, help="UUID of the private VLAN"),
)

SERVER = Resource("servers", list_methods=("get", "put", "delete", "post"), default_order=(Server.created, Server.uuid),
                  fields=(
    uuid_field(Server, "UUID of server"),
    resource_uri_field("servers"),
    owner_field("UUID of the server owner", required=True),
    Field("name", NAME, required=True, short=True, lookups=("exact", "contains"),
          column=Server.name, orderable=True, help="Human readable name of server"),
    Field("cpu", Int(), required=True, help="Server's CPU Clock speed measured in MHz"),
    Field("mem", Int(), required=True, help="Server's Random Access Memory measured in bytes"),
    Field("smp", Int(), nullable=True, default=None,
          help="Symmetric Multiprocessing (SMP) i.e. number of CPU cores"),
    Field("vnc_password", Str(max_length=64, controls=False), required=True, help="VNC Password to connect to server"),
    Field("cpu_type", Str(), default="amd", choices=("amd", "intel"),
          help="Specify the CPU type of the host on which this virtual server should run"),
    Field("hypervisor", Str(), default="kvm", choices=("kvm",),
          help="Specify hypervisor on which this server should run"),
    Field("cpu_model", Str(), nullable=True, default=None, choices=("kvm64",),
          help="Choose the virtual CPU model; by default the host's CPU capabilities are passed through"),
    Field("cpus_instead_of_cores", Bool(), default=False,
          help="Expose server SMPs as separate CPUs, instead of cores of a single CPU."),
    Field("enable_numa", Bool(), default=False, help="Expose NUMA topology to the server."),
    Field("hv_relaxed", Bool(), default=False, help="Improve performance of Windows servers."),
    Field("hv_tsc", Bool(), default=False, help="Improves performance of Windows servers (reference TSC page)."),
    Field("context", Bool(), default=True, help="Enable guest context serial device"),
    Field("drives", Nested(DRIVE_ATTACHMENT, many=True), default=list, get=_attachments,
          help="List of attached Drives to server"),
    Field("nics", Nested(NIC, many=True), default=list, get=_nics, help="The list of nics attached to this server"),
    meta_field("User assigned meta information for this server"),
    tags_field(Server),
    Field("pubkeys", RefList("keypairs", aliases=("pubkeys",)), default=list,
          get=lambda s: [link("pubkeys", k) for k in s.pubkeys],
          help="List of SSH keys for that server"),
    Field("requirements", StrList(), default=list,
          help="A collection of special requirements for this server"),
    Field("auto_start", Bool(), default=False, help="Enable auto starting of the guest after a clone."),
    Field("allocation_pool", Str(max_length=256), nullable=True, default=None,
          help="Host Allocation Pool associated to the server"),
    Field("is_grey", Bool(), default=False, help="Specifies if server can be used to fill spare capacity"),
    Field("gpus", Nested((Field("model", Str(), required=True, help="Model of the GPU"),
                          Field("gpu", Output(), readonly=True, help="GPU details")), many=True),
          default=list, help="List of attached GPUs"),
    Field("epcs", Nested((Field("size", Int(minimum=1), required=True, help="Size of the EPC in bytes"),), many=True),
          default=list, help="List of defined EPCs"),
    Field("status", Str(), readonly=True, short=True, lookups=("exact",), column=Server.status,
          help="Status of the guest."),
    Field("runtime", Output(), readonly=True, short=True, get=_runtime, help="Runtime information of the guest"),
    jobs_field(),
    *acl_fields(),
))

routes = web.RouteTableDef()
RELATED = (Server.drive_links, Server.tag_links, Server.job_links)  # what a rendering reads
# created: only ordered by; host, avoid: the scheduler's
READER = Rows(Server, RELATED, omit=("created", "host", "avoid"), verbatim=SERVER.plain)


def owned(request: web.Request) -> Select[Any]:
    return owned_rows(Server, RELATED, caller(request))


def one(request: web.Request) -> Select[Any]:
    return owned_row(Server, RELATED, caller(request), request.match_info["uuid"])


collection_views(routes, SERVER, owned, prepare=lambda request: partial(attach_stats, request.app[WORK]),
                 reader=READER)


@routes.post(path("servers"))
async def create(request: web.Request) -> web.Response:
    objects, owner, caps = objects_of(await read_json(request)), caller(request), request.app[CAPABILITIES]
    checked = validated(objects, lambda body: SERVER.validate(body, create=True))
    async with session(request) as s:
        # The drives and tags every valid object names, looked up once (a bad object fails below).
        bulk = await Bulk.load(s, [v for v in checked if isinstance(v, dict)], owner)

        async def make(values: dict[str, Any] | DomainError) -> Server:
            if isinstance(values, DomainError):
                raise values
            # Lists start empty: a rejected key leaves its column unset, and the next query's autoflush
            # must not fail on NULL before write_server reports the validation errors.
            server = Server(uuid=new_uuid(), owner_uuid=owner, smp=0, smp_auto=True, status="stopped",
                            drive_links=[], nics=[], gpus=[], epcs=[], pubkeys=[])
            s.add(server)  # flushed by write_server's first query, once its columns are set
            await write_server(s, server, values, owner, caps, creating=True, bulk=bulk)
            return server

        uuids = [server.uuid for server in await for_each(checked, make)]
        await s.flush()  # every object's rows in one flush: a multi-row INSERT per table
        await refresh_mount_status(s, bulk.mounts)
    return await created(request, SERVER, owned(request), Server, uuids, READER)


@routes.get(path("servers/{uuid}"))
@confirms_caller
async def get(request: web.Request) -> web.Response:
    server = await read_one(request, READER, "Server")
    attach_stats(request.app[WORK], [server])
    return respond(SERVER.dump(server, only=_only(request)))


@routes.get(path("servers/{uuid}/runtime"))
@confirms_caller
async def runtime(request: web.Request) -> web.Response:
    server = await read_one(request, READER, "Server")
    attach_stats(request.app[WORK], [server])
    return respond(_runtime(server) or {})


@routes.put(path("servers/{uuid}"))
async def edit(request: web.Request) -> web.Response:
    values = SERVER.validate(await read_json(request), create=False)
    async with session(request) as s:
        server = await get_owned(s, one(request), "Server")
        await write_server(s, server, values, caller(request), request.app[CAPABILITIES], creating=False)
    server = await read_one(request, READER, "Server")
    server.live = None  # as ever: the answer to an edit shows no statistics
    return respond(SERVER.dump(server))


async def _delete(request: web.Request, s: AsyncSession, servers: list[Server]) -> AfterCommit:
    volumes = await delete_servers(s, servers, _recurse(request))
    work = request.app[WORK]
    return lambda: work.later(work.volumes.delete(volumes), "delete volumes")


delete_views(routes, "servers", Server, "Server", owned, _delete)

RECURSE = {"all_drives": ("disk", "cdrom"), "disks": ("disk",), "cdroms": ("cdrom",)}


def _recurse(request: web.Request) -> tuple[str, ...]:
    value = request.query.get("recurse")
    if value is None:
        return ()
    if value not in RECURSE:
        raise invalid(f"recurse must be one of {', '.join(RECURSE)}", "recurse")
    return RECURSE[value]


def _only(request: web.Request) -> set[str] | None:
    raw = request.query.get("fields")
    return {f.strip() for f in raw.split(",")} if raw else None
