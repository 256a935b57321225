"""Claims as counters on the host row: capacity from the facts, cpu/mem claimed by its servers.

Revision ID: 0008_host_claims
Revises: 0007
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0008_host_claims"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cpu_capacity", sa.BigInteger(), nullable=False, server_default="1000"))
        batch_op.add_column(sa.Column("mem_capacity", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("cpu_used", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("mem_used", sa.BigInteger(), nullable=False, server_default="0"))
    conn = op.get_bind()
    hosts = sa.table("hosts", sa.column("name", sa.String), sa.column("facts", sa.Text),
                     sa.column("cpu_capacity", sa.BigInteger), sa.column("mem_capacity", sa.BigInteger),
                     sa.column("cpu_used", sa.BigInteger), sa.column("mem_used", sa.BigInteger))
    servers = sa.table("servers", sa.column("host", sa.String), sa.column("cpu", sa.BigInteger),
                       sa.column("mem", sa.BigInteger))
    used = {host: (cpu, mem) for host, cpu, mem in conn.execute(
        sa.select(servers.c.host, sa.func.sum(servers.c.cpu), sa.func.sum(servers.c.mem))
        .where(servers.c.host.is_not(None)).group_by(servers.c.host))}
    for name, raw in conn.execute(sa.select(hosts.c.name, sa.cast(hosts.c.facts, sa.Text))).all():
        facts = json.loads(raw) if raw else {}
        cpu, mem = used.get(name, (0, 0))
        conn.execute(hosts.update().where(hosts.c.name == name).values(
            cpu_capacity=int(facts.get("cores", 1) * facts.get("mhz", 1000)), mem_capacity=int(facts.get("memory", 0)),
            cpu_used=int(cpu or 0), mem_used=int(mem or 0)))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        for column in ("mem_used", "cpu_used", "mem_capacity", "cpu_capacity"):
            batch_op.drop_column(column)
