"""networks, ips, vlans (issue 7)

Revision ID: 0004_networks
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_networks"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("subnet", sa.String(length=64), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("range_first", sa.String(length=64), nullable=False),
        sa.Column("range_last", sa.String(length=64), nullable=False),
        sa.Column("nameservers", sa.JSON(), nullable=False),
        sa.Column("bridge", sa.String(length=15), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "ips",
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("network_name", sa.String(length=32), nullable=False),
        sa.Column("owner_uuid", sa.String(length=36), nullable=False),
        sa.Column("subscription", sa.Integer(), nullable=True),
        sa.Column("server_uuid", sa.String(length=36), nullable=True),
        sa.Column("mac", sa.String(length=17), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["network_name"], ["networks.name"]),
        sa.ForeignKeyConstraint(["owner_uuid"], ["users.uuid"]),
        sa.PrimaryKeyConstraint("uuid"),
    )
    with op.batch_alter_table("ips") as batch:
        batch.create_index("ix_ips_network_name", ["network_name"])
        batch.create_index("ix_ips_owner_uuid", ["owner_uuid"])
        batch.create_index("ix_ips_server_uuid", ["server_uuid"])
        batch.create_index("ix_ips_created", ["created"])
    op.create_table(
        "vlans",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("owner_uuid", sa.String(length=36), nullable=True),
        sa.Column("tag", sa.Integer(), nullable=False),
        sa.Column("subscription", sa.Integer(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_uuid"], ["users.uuid"]),
        sa.PrimaryKeyConstraint("uuid"),
        sa.UniqueConstraint("tag"),
    )
    with op.batch_alter_table("vlans") as batch:
        batch.create_index("ix_vlans_owner_uuid", ["owner_uuid"])
        batch.create_index("ix_vlans_created", ["created"])
    op.create_table(
        "vlan_members",
        sa.Column("vlan_uuid", sa.String(length=36), nullable=False),
        sa.Column("server_uuid", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["vlan_uuid"], ["vlans.uuid"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["server_uuid"], ["servers.uuid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("vlan_uuid", "server_uuid"),
    )
    with op.batch_alter_table("vlan_members") as batch:
        batch.create_index("ix_vlan_members_server_uuid", ["server_uuid"])


def downgrade() -> None:
    op.drop_table("vlan_members")
    op.drop_table("vlans")
    op.drop_table("ips")
    op.drop_table("networks")
