"""Join the host-claims branch into the main line.

Revision ID: 0010_merge_host_claims
Revises: 0009_merge_quotas, 0008_host_claims
"""

revision = "0010_merge_host_claims"
down_revision = ("0009_merge_quotas", "0008_host_claims")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
