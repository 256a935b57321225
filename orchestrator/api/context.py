"""The server context document (spec §33.1): what a guest reads on its ttyS1.

It is the server's full API view with the differences of §33.1 and ``dumps/response_context_all``:
no owner, status, runtime, URIs, jobs or ACLs; drives expanded to their definitions; IP
references expanded to address, netmask, gateway and nameservers (a running DHCP NIC shows its
lease); keys expanded; tag names; the owner's global context.  The work layer pushes it to the
server's host whenever it may have changed (``orchestrator/work/contexts.py``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from orchestrator.api.drives import DRIVE
from orchestrator.api.servers import RELATED, SERVER
from orchestrator.db.models import Drive, Ip, KeyPair, Network, Server, Tag, TagLink, User

DROPPED = ("owner", "status", "runtime", "resource_uri", "jobs", "grantees", "permissions", "context")
DRIVE_KEYS = ("uuid", "name", "media", "size", "storage_type", "meta", "tags", "allow_multimount", "licenses",
              "affinities")


async def context_document(s: AsyncSession, server_uuid: str) -> dict[str, Any] | None:
    server = await s.scalar(select(Server).where(Server.uuid == server_uuid)
                            .options(*(selectinload(r) for r in RELATED)))
    if server is None:
        return None
    view = SERVER.dump(server)
    document = {key: value for key, value in view.items() if key not in DROPPED}
    document["tags"] = await _tag_names(s, [link.tag_uuid for link in server.tag_links])
    document["drives"] = await _drives(s, view["drives"])
    document["nics"] = await _nics(s, server, view["nics"])
    keys = {k.uuid: k for k in (await s.scalars(select(KeyPair).where(
        KeyPair.uuid.in_(server.pubkeys), KeyPair.owner_uuid == server.owner_uuid))).all()}
    document["pubkeys"] = [{"uuid": k.uuid, "name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint}
                           for k in (keys[u] for u in server.pubkeys if u in keys)]
    # cloud-init's CloudSigma datasource indexes meta["ssh_public_key"] and ignores the whole
    # context without it: the server's keys go there unless the user set it [decision].
    document["meta"] = {"ssh_public_key": "\n".join(k["public_key"] for k in document["pubkeys"]),
                        **document["meta"]}
    owner = await s.get(User, server.owner_uuid)
    document["global_context"] = dict(owner.global_context) if owner is not None else {}
    document["cpu_perf_threshold"] = document["mem_perf_threshold"] = 0.0  # as upstream sends them
    return document


async def _tag_names(s: AsyncSession, uuids: list[str]) -> list[str]:
    names = dict((await s.execute(select(Tag.uuid, Tag.name).where(Tag.uuid.in_(uuids)))).all())
    return [names[u] for u in uuids if u in names]


async def _drives(s: AsyncSession, attachments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    uuids = [a["drive"]["uuid"] for a in attachments]
    rows = {d.uuid: d for d in (await s.scalars(select(Drive).where(Drive.uuid.in_(uuids)).options(
        selectinload(Drive.attachments), selectinload(Drive.tag_links), selectinload(Drive.job_links)))).all()}
    out = []
    for attachment in attachments:
        drive = rows.get(attachment["drive"]["uuid"])
        entry = {k: v for k, v in attachment.items() if k != "runtime"}
        if drive is not None:
            view = DRIVE.dump(drive)
            entry["drive"] = {key: view.get(key) for key in DRIVE_KEYS}
            entry["drive"]["tags"] = await _tag_names(s, [link.tag_uuid for link in drive.tag_links])
        out.append(entry)
    return out


async def _nics(s: AsyncSession, server: Server, views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    networks = list((await s.scalars(select(Network))).all())
    out = []
    for nic, view in zip(server.nics, views, strict=True):
        entry = {k: v for k, v in view.items() if k != "runtime"}
        for key in ("ip_v4_conf", "ip_v6_conf"):
            conf = nic[key]
            if conf is None:
                continue
            address = conf["ip"] or (nic.get("lease") if conf["conf"] == "dhcp" else None)
            entry[key] = {"conf": conf["conf"], "ip": await _address(s, address, networks) if address else None}
        out.append(entry)
    return out


async def _address(s: AsyncSession, address: str, networks: list[Network]) -> dict[str, Any]:
    """An address as the guest sees it: where it lies and how to route (§33.1)."""
    ip = ipaddress.ip_address(address)
    network = next((n for n in networks if ip in ipaddress.ip_network(n.subnet)), None)
    row = await s.get(Ip, address)
    tags = [] if row is None else await _tag_names(s, list((await s.scalars(
        select(TagLink.tag_uuid).where(TagLink.res_uuid == address).order_by(TagLink.position))).all()))
    return {"uuid": address,
            "netmask": ipaddress.ip_network(network.subnet).prefixlen if network else None,
            "gateway": network.gateway if network else None,
            "nameservers": list(network.nameservers) if network else [],
            "meta": dict(row.meta) if row is not None else {}, "tags": tags}
