"""Copy-on-write clones: the read-only bases their overlays read through to, and each drive's base.

Revision ID: 0011_cow_bases
Revises: 0010_merge_host_claims
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_cow_bases"
down_revision = "0010_merge_host_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volume_bases",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(256), nullable=True),
        sa.Column("volume", sa.String(256), nullable=False),
        sa.Column("parent_uuid", sa.String(36), nullable=True),
        sa.Column("origin_uuid", sa.String(36), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_volume_bases_parent_uuid", "volume_bases", ["parent_uuid"])
    op.create_index("ix_volume_bases_origin_uuid", "volume_bases", ["origin_uuid"])
    with op.batch_alter_table("drives", schema=None) as batch_op:
        batch_op.add_column(sa.Column("base_uuid", sa.String(36), nullable=True))
        batch_op.create_index("ix_drives_base_uuid", ["base_uuid"])


def downgrade() -> None:
    with op.batch_alter_table("drives", schema=None) as batch_op:
        batch_op.drop_index("ix_drives_base_uuid")
        batch_op.drop_column("base_uuid")
    op.drop_index("ix_volume_bases_origin_uuid", "volume_bases")
    op.drop_index("ix_volume_bases_parent_uuid", "volume_bases")
    op.drop_table("volume_bases")
