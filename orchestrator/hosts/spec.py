"""The agent's ``server`` message (:class:`agents.wire.Server`) built from a server row and its drives."""

from __future__ import annotations

from agents import wire
from orchestrator.db.models import Drive, Server


def server_spec(server: Server, drives: dict[str, Drive], networks: list[str | None] | None = None) -> wire.Server:
    """``networks`` names each NIC's libvirt network (as network.ensure answered; None: a user-mode NIC)."""
    return wire.Server(
        uuid=server.uuid, name=server.name, cpu=server.cpu, mem=server.mem, smp=server.smp,
        cpus_instead_of_cores=server.cpus_instead_of_cores, enable_numa=server.enable_numa,
        hv_relaxed=server.hv_relaxed, hv_tsc=server.hv_tsc, cpu_model=server.cpu_model,
        vnc_password=server.vnc_password, context=server.context,
        drives=[wire.ServerDrive(uuid=a.drive_uuid, pool=drives[a.drive_uuid].pool, volume=drives[a.drive_uuid].volume,
                                 media=drives[a.drive_uuid].media, device=a.device,  # type: ignore[arg-type]
                                 dev_channel=a.dev_channel, boot_order=a.boot_order)
                for a in server.drive_links],
        nics=[wire.ServerNic(mac=n["mac"], model=n["model"], network=networks[i] if networks else None,
                             boot_order=n["boot_order"]) for i, n in enumerate(server.nics)],
    )
