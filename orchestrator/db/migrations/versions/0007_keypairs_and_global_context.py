"""SSH key pairs; the account's global context and its other profile keys.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keypairs",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("owner_uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_uuid"], ["users.uuid"]),
        sa.PrimaryKeyConstraint("uuid"),
    )
    with op.batch_alter_table("keypairs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keypairs_owner_uuid"), ["owner_uuid"], unique=False)
        batch_op.create_index(batch_op.f("ix_keypairs_created"), ["created"], unique=False)
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("global_context", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("profile", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("profile")
        batch_op.drop_column("global_context")
    with op.batch_alter_table("keypairs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keypairs_created"))
        batch_op.drop_index(batch_op.f("ix_keypairs_owner_uuid"))
    op.drop_table("keypairs")
