"""Jobs keep the reason they failed (issue 11: failures are first-class).

Revision ID: 0007_job_error
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_job_error"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("error")
