"""Join the quotas branch into the main line.

Revision ID: 0009_merge_quotas
Revises: 0008_merge_keypairs_job_error, 0008_quotas
"""

revision = "0009_merge_quotas"
down_revision = ("0008_merge_keypairs_job_error", "0008_quotas")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
