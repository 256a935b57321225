"""Join the keypairs/global-context and job-error branches into one head.

Revision ID: 0008_merge_keypairs_job_error
Revises: 0007, 0007_job_error
"""

revision = "0008_merge_keypairs_job_error"
down_revision = ("0007", "0007_job_error")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
