"""Users an operator disabled (``strato users disable``): refused at every door until enabled.

Revision ID: 0011_user_disabled
Revises: 0010_merge_host_claims
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_user_disabled"
down_revision = "0010_merge_host_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled")
