"""Join the library-drive and networking branches into one head.

Revision ID: 0005
Revises: 0004_libdrives, 0004_networks
"""

revision = "0005"
down_revision = ("0004_libdrives", "0004_networks")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
