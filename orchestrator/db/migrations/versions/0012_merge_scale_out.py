"""Join the branches of one round of work (several API nodes, copy-on-write bases, …) into one line.

Revision ID: 0012_merge_scale_out
Revises: 0011_multinode, 0011_cow_bases, 0011_user_disabled, 0011_migrations
"""

revision = "0012_merge_scale_out"
down_revision = ("0011_multinode", "0011_cow_bases", "0011_user_disabled", "0011_migrations")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
