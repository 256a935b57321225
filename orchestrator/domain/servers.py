"""Rules for writing a server definition (spec §11, §14, §16.1, §17.4).

The API module validates each field against the table; this module applies
the validated values to a row: capability limits on the merged definition,
drive attachments, NIC identity by MAC, tags.  It raises ApiErrors with
error points relative to the server object.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from agents import wire
from orchestrator.db.models import Drive, Server, ServerDrive
from orchestrator.domain.capabilities import Capabilities
from orchestrator.domain.drives import Volume, delete_drives, refresh_mount_status
from orchestrator.domain.errors import DomainError, forbidden, invalid
from orchestrator.domain.keypairs import check_server_pubkeys
from orchestrator.domain.lifecycle import Status, allows, check
from orchestrator.domain.networks import check_nic_references, forget_servers
from orchestrator.domain.tagging import TagLookup, forget_resources, set_resource_tags

COLUMNS = ("name", "cpu", "mem", "vnc_password", "cpu_type", "hypervisor", "cpu_model", "cpus_instead_of_cores",
           "enable_numa", "hv_relaxed", "hv_tsc", "context", "auto_start", "is_grey", "allocation_pool", "meta",
           "requirements")
EDITABLE_WHILE_ACTIVE = frozenset({"name", "meta", "tags"})  # spec §14


@dataclass
class Bulk:
    """What a request creating many servers looks up once for all of them, instead of per object:
    the drives they attach and which of those some server lists already, the caller's tags among
    those named and each one's next position; and the drives whose mount status to refresh once
    at the end (:func:`refresh_mount_status`).  Rows are flushed once, by the caller."""

    drives: dict[str, Drive] = field(default_factory=dict)
    attached: set[str] = field(default_factory=set)
    tags: TagLookup = field(default_factory=TagLookup)
    mounts: set[str] = field(default_factory=set)

    @classmethod
    async def load(cls, s: AsyncSession, values: list[dict[str, Any]], owner: str) -> Bulk:
        ids = list(dict.fromkeys(e["drive"] for v in values for e in v.get("drives", [])))
        bulk = cls(tags=await TagLookup.load(s, [t for v in values for t in v.get("tags", [])], owner))
        if ids:
            bulk.drives = {d.uuid: d for d in (await s.scalars(select(Drive).where(
                Drive.uuid.in_(ids), or_(Drive.owner_uuid == owner, Drive.owner_uuid.is_(None))))).all()}
            bulk.attached = set((await s.scalars(select(ServerDrive.drive_uuid).where(
                ServerDrive.drive_uuid.in_(ids)))).all())
        return bulk

def parse_channel(device: str, channel: str) -> tuple[int, int]:
    """``"C:U"`` within the device type's limits (spec §16.1; one table, ``agents.wire.CHANNEL_LIMITS``)."""
    try:
        return wire.parse_channel(device, channel)
    except ValueError as e:
        raise invalid(str(e), "dev_channel") from None


def new_mac() -> str:
    # Locally administered unicast, as upstream's generated MACs (spec §17.1).
    return "22:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


async def write_server(s: AsyncSession, server: Server, values: dict[str, Any], owner: str,
                       caps: Capabilities, *, creating: bool, bulk: Bulk | None = None) -> None:
    """Apply validated ``values`` to ``server`` (new when ``creating``); ``bulk``: one of many new
    servers, whose lookups were made for all (:class:`Bulk`)."""
    if not creating and not allows("edit", server.status):
        values = {k: v for k, v in values.items() if k in EDITABLE_WHILE_ACTIVE}
    for key in COLUMNS:
        if key in values:
            setattr(server, key, values[key])
    if "smp" in values:
        server.smp_auto = values["smp"] is None
        if values["smp"] is not None:
            server.smp = values["smp"]
    errors = check_limits(server, caps)
    for key in ("gpus", "epcs"):
        if values.get(key):
            # Not offered by this cloud's capabilities (spec §11 rule 12).
            errors.append(invalid(f"{key} are not available on this cloud", key))
        elif key in values:
            setattr(server, key, [])
    if "pubkeys" in values:
        try:
            server.pubkeys = await check_server_pubkeys(s, values["pubkeys"], owner)
        except DomainError as e:
            errors.append(e.prefixed("pubkeys"))
    if "nics" in values:
        try:
            server.nics = merge_nics([] if creating else server.nics, values["nics"])
            await check_nic_references(s, server, owner, new=creating)
        except DomainError as e:
            errors.append(e.prefixed("nics"))
    if "drives" in values:
        try:
            await attach_drives(s, server, values["drives"], owner, bulk)
        except DomainError as e:
            errors.append(e)
    if errors:
        raise DomainError.collect(errors)
    check_boot_orders(server)
    if "tags" in values:
        await set_resource_tags(s, "servers", server.uuid, values["tags"], owner, new=creating,
                                known=bulk.tags if bulk else None)


def check_limits(server: Server, caps: Capabilities) -> list[DomainError]:
    """Capability limits on the merged definition; fills in an automatic ``smp`` (spec §11)."""
    if server.cpu_type not in caps.cpu_types:
        return [invalid(f"cpu_type {server.cpu_type!r} is not offered for hypervisor kvm", "cpu_type")]
    host = caps.host(server.cpu_type)
    if server.smp_auto:
        server.smp = max(host["smp"]["min"], math.ceil(server.cpu / host["cpu_per_smp"]["max"]))
    errors = [
        invalid(f"{name} must be between {host[name]['min']} and {host[name]['max']}", name)
        for name in ("cpu", "mem", "smp")
        if not host[name]["min"] <= getattr(server, name) <= host[name]["max"]
    ]
    per_smp = host["cpu_per_smp"]
    if not errors and server.cpu / server.smp > per_smp["max"]:
        errors.append(invalid(f"cpu per smp ({server.cpu / server.smp:.0f} MHz) exceeds {per_smp['max']}", "cpu"))
    if not errors and server.smp > 1 and server.cpu / server.smp < per_smp["min"]:
        errors.append(invalid(f"cpu per smp ({server.cpu / server.smp:.0f} MHz) is below {per_smp['min']}", "cpu"))
    if not server.vnc_password:
        errors.append(invalid("vnc_password must not be empty", "vnc_password"))
    return errors


def check_boot_orders(server: Server) -> None:
    """Boot orders of drives and NICs share one numbering (spec §11 rule 8)."""
    seen: set[int] = set()
    places = [(f"drives.{i}", d.boot_order) for i, d in enumerate(server.drive_links)]
    places += [(f"nics.{i}", n["boot_order"]) for i, n in enumerate(server.nics)]
    for point, order in places:
        if order is None:
            continue
        if order in seen:
            raise invalid(f"boot_order {order} is used twice", f"{point}.boot_order")
        seen.add(order)


async def attach_drives(s: AsyncSession, server: Server, entries: list[dict[str, Any]], owner: str,
                        bulk: Bulk | None = None) -> None:
    errors: list[DomainError] = []
    channels: set[tuple[str, int, int]] = set()
    for i, entry in enumerate(entries):
        try:
            channel = (entry["device"], *parse_channel(entry["device"], entry["dev_channel"]))
        except DomainError as e:
            errors.append(e.prefixed(f"drives.{i}"))
            continue
        if channel in channels:
            errors.append(invalid(f"{entry['device']} {entry['dev_channel']} is used twice", f"drives.{i}.dev_channel"))
        channels.add(channel)
    for device, limit in wire.CHANNEL_LIMITS.items():
        if sum(entry["device"] == device for entry in entries) > limit.drives:
            errors.append(invalid(f"A server takes at most {limit.drives} {device} drives", "drives"))
    ids = [entry["drive"] for entry in entries]
    if bulk is not None:
        drives = {u: bulk.drives[u] for u in ids if u in bulk.drives}
    else:
        drives = {d.uuid: d for d in (await s.scalars(select(Drive).where(
            Drive.uuid.in_(ids), or_(Drive.owner_uuid == owner, Drive.owner_uuid.is_(None))))).all()}
    seen: set[str] = set()
    for i, uuid in enumerate(ids):
        if uuid not in drives:
            errors.append(invalid(f"Drive {uuid} does not exist", f"drives.{i}.drive"))
        elif drives[uuid].owner_uuid is None and drives[uuid].media != "cdrom":
            # A library disk image is cloned first; only library cdroms attach directly (spec §11 rule 7).
            errors.append(forbidden(f"Drive {uuid} is a library disk image; clone it first", f"drives.{i}.drive"))
        elif uuid in seen:
            errors.append(invalid(f"Drive {uuid} is attached twice", f"drives.{i}.drive"))
        seen.add(uuid)
    if errors:
        raise DomainError.collect(errors)
    if bulk is not None:  # a new server: every attachment is elsewhere, earlier objects' included
        elsewhere = bulk.attached & set(ids)
    else:
        elsewhere = set((await s.scalars(select(ServerDrive.drive_uuid).where(
            ServerDrive.drive_uuid.in_(ids), ServerDrive.server_uuid != server.uuid))).all())
    for i, uuid in enumerate(ids):
        drive = drives[uuid]
        if drive.media == "disk" and not drive.allow_multimount and uuid in elsewhere:
            raise forbidden(f"Drive {uuid} is a disk already attached to another server and does not allow "
                            "multimount", f"drives.{i}.drive")
    before = {link.drive_uuid for link in server.drive_links}
    server.drive_links = [
        ServerDrive(server_uuid=server.uuid, position=i, drive_uuid=e["drive"], device=e["device"],
                    dev_channel=e["dev_channel"], boot_order=e.get("boot_order"))
        for i, e in enumerate(entries)
    ]
    if bulk is not None:
        bulk.attached.update(ids)
        bulk.mounts.update(before, ids)
        return
    await s.flush()
    await refresh_mount_status(s, before | set(ids))


def merge_nics(current: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The new NIC list, matched against the current one by MAC (spec §17.4)."""
    by_mac = {nic["mac"]: nic for nic in current}
    seen: set[str] = set()
    out = []
    for i, entry in enumerate(entries):
        mac = (entry.get("mac") or "").lower()
        if mac:
            if mac not in by_mac:
                raise invalid(f"{mac} is not a NIC of this server; leave mac out for a new NIC", f"{i}.mac")
            if mac in seen:
                raise invalid(f"NIC {mac} is listed twice", f"{i}.mac")
            seen.add(mac)
            model = entry.get("model") or by_mac[mac]["model"]
        else:
            mac, model = new_mac(), entry.get("model") or "virtio"
        v4, v6, vlan = entry.get("ip_v4_conf"), entry.get("ip_v6_conf"), entry.get("vlan")
        if vlan is not None and (v4 is not None or v6 is not None):
            raise invalid("A NIC cannot be private (vlan) and public (ip configuration) at once", str(i))
        # VLAN and static IP references are checked against the caller's (networks.check_nic_references).
        out.append({"boot_order": entry.get("boot_order"), "ip_v4_conf": ip_conf(v4, f"{i}.ip_v4_conf"),
                    "ip_v6_conf": ip_conf(v6, f"{i}.ip_v6_conf", v6=True), "mac": mac, "model": model,
                    "vlan": vlan})
    return out


def ip_conf(conf: dict[str, Any] | None, point: str, v6: bool = False) -> dict[str, Any] | None:
    if conf is None:
        return None
    kind, ip = conf.get("conf", "dhcp"), conf.get("ip")
    if kind in ("dhcp", "manual") and ip is not None:
        raise invalid(f"An IP cannot be given with conf {kind!r}", f"{point}.ip")
    if kind == "static":
        if ip is None:
            raise invalid("conf 'static' needs an ip", f"{point}.ip")
        if v6:  # no IPv6 pools: no IPv6 address exists for anyone
            raise invalid(f"IP {ip} does not exist", f"{point}.ip")
        return {"conf": kind, "ip": ip}
    return {"conf": kind, "ip": None}


async def delete_servers(s: AsyncSession, servers: list[Server], media: tuple[str, ...]) -> list[Volume]:
    """Delete stopped servers and, with ``recurse``, their drives of the given media (spec §12.7).

    Returns the volumes of the deleted drives, for their storage hosts to delete after commit."""
    for server in servers:
        check(server, "delete")
    server_ids = [server.uuid for server in servers]
    attached = {link.drive_uuid for server in servers for link in server.drive_links}
    # A drive another server also lists goes too, detached from it, while that server is stopped
    # (a clone shares its source's cdroms, §15): pycloudsigma and libcloud expect every drive of the
    # deleted server gone.  One in use by a server that is not stopped stays [decision].
    in_use = set((await s.scalars(
        select(ServerDrive.drive_uuid).join(Server, Server.uuid == ServerDrive.server_uuid).where(
            ServerDrive.drive_uuid.in_(attached), ServerDrive.server_uuid.not_in(server_ids),
            Server.status != Status.STOPPED))).all())
    doomed = [] if not media else (await s.scalars(select(Drive).where(
        Drive.uuid.in_(attached - in_use), Drive.media.in_(media), Drive.owner_uuid.is_not(None)))).all()
    for server in servers:
        await s.delete(server)
    await s.flush()
    await forget_resources(s, server_ids)
    await forget_servers(s, server_ids)
    volumes = await delete_drives(s, list(doomed))
    await refresh_mount_status(s, attached - {d.uuid for d in doomed})
    return volumes
