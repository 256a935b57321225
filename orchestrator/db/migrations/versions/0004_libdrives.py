"""library drives: ownerless drives plus their catalogue attributes

Revision ID: 0004_libdrives
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_libdrives"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drives", schema=None) as batch_op:
        batch_op.alter_column("owner_uuid", existing_type=sa.String(length=36), nullable=True)
    op.create_table(
        "libdrives",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("arch", sa.String(length=8), nullable=False),
        sa.Column("category", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(length=4096), nullable=False),
        sa.Column("distribution", sa.String(length=256), nullable=True),
        sa.Column("favourite", sa.Boolean(), nullable=False),
        sa.Column("image_type", sa.String(length=16), nullable=False),
        sa.Column("install_notes", sa.String(length=8192), nullable=False),
        sa.Column("os", sa.String(length=64), nullable=False),
        sa.Column("paid", sa.Boolean(), nullable=False),
        sa.Column("url", sa.String(length=1024), nullable=False),
        sa.Column("version", sa.String(length=256), nullable=True),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["uuid"], ["drives.uuid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uuid"),
    )
    with op.batch_alter_table("libdrives", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_libdrives_checksum"), ["checksum"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("libdrives", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_libdrives_checksum"))
    op.drop_table("libdrives")
    op.execute("DELETE FROM drives WHERE owner_uuid IS NULL")
    with op.batch_alter_table("drives", schema=None) as batch_op:
        batch_op.alter_column("owner_uuid", existing_type=sa.String(length=36), nullable=False)
