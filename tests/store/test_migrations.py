"""Migrations upgrade a database that already holds data (not only an empty one)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from orchestrator.db.engine import MIGRATIONS, make_engine, migrate


def test_upgrade_from_0003_keeps_rows_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with create_engine(f"sqlite:///{path}").begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    db = sqlite3.connect(path)
    db.execute("insert into users(uuid, email, password_hash, clone_naming, created, meta) "
               "values ('u', 'e', 'x', 'NONE', '2020-01-01', '{}')")
    db.execute("insert into drives(uuid, owner_uuid, name, size, media, storage_type, affinities, allow_multimount, "
               "meta, licenses, status, avoid, created) values ('d', 'u', 'n', 4096, 'disk', 'dssd', '[]', 0, '{}', "
               "'[]', 'mounted', '[]', '2020-01-01')")
    db.execute("insert into servers(uuid, owner_uuid, name, cpu, mem, smp, smp_auto, vnc_password, cpu_type, "
               "hypervisor, cpus_instead_of_cores, enable_numa, hv_relaxed, hv_tsc, context, auto_start, is_grey, "
               "meta, requirements, nics, gpus, epcs, pubkeys, status, created) values ('s', 'u', 'n', 1000, 1, 1, "
               "1, 'p', 'amd', 'kvm', 0, 0, 0, 0, 1, 0, 0, '{}', '[]', '[]', '[]', '[]', '[]', 'stopped', "
               "'2020-01-01')")
    db.execute("insert into server_drives values ('s', 0, 'd', 'virtio', '0:0', 1)")
    db.commit()
    db.close()

    async def upgrade() -> tuple[list, list, list, int]:
        engine = make_engine(f"sqlite:///{path}")
        try:
            await migrate(engine)
            async with engine.connect() as c:
                heads = (await c.execute(text("select version_num from alembic_version"))).all()
                drives = (await c.execute(text("select uuid, owner_uuid, status from drives"))).all()
                links = (await c.execute(text("select server_uuid, drive_uuid from server_drives"))).all()
                fks = (await c.execute(text("pragma foreign_keys"))).scalar_one()
            return heads, drives, links, fks
        finally:
            await engine.dispose()

    heads, drives, links, fks = asyncio.run(upgrade())
    assert len(heads) == 1  # one head after the merge
    assert drives == [("d", "u", "mounted")] and links == [("s", "d")]
    assert fks == 1  # enforced again after the migration
