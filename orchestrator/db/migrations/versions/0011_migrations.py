"""Live migration (issue 12): a server keeps the avoid list it was started with (the scheduler
honours it when it moves the server), and a job keeps the parameters an operator queued it with.

Revision ID: 0011_migrations
Revises: 0010_merge_host_claims
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_migrations"
down_revision = "0010_merge_host_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("avoid", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("params", sa.JSON(), nullable=True))
        # the API node looks for queued migrations among the started jobs several times a second
        batch_op.create_index("ix_jobs_state", ["state"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state")
        batch_op.drop_column("params")
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_column("avoid")
