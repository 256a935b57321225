"""Per-user quotas (issue 16 item 10).

Revision ID: 0008_quotas
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_quotas"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quotas",
        sa.Column("user_uuid", sa.String(length=36), nullable=False),
        sa.Column("servers", sa.BigInteger(), nullable=True),
        sa.Column("cpu", sa.BigInteger(), nullable=True),
        sa.Column("mem", sa.BigInteger(), nullable=True),
        sa.Column("storage", sa.BigInteger(), nullable=True),
        sa.Column("tunnels", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["user_uuid"], ["users.uuid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_uuid"),
    )


def downgrade() -> None:
    op.drop_table("quotas")
