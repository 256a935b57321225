"""Several API nodes on one database: cookie sessions, one-time tokens, uploads in progress, node,
host and job leases.

Revision ID: 0011_multinode
Revises: 0010_merge_host_claims
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_multinode"
down_revision = "0010_merge_host_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("sid_hash", sa.String(64), primary_key=True),
        sa.Column("user_uuid", sa.String(36), sa.ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False))
    op.create_index("ix_web_sessions_user_uuid", "web_sessions", ["user_uuid"])
    op.create_index("ix_web_sessions_expires", "web_sessions", ["expires"])
    op.create_table(
        "one_time_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False))
    op.create_index("ix_one_time_tokens_subject", "one_time_tokens", ["subject"])
    op.create_index("ix_one_time_tokens_expires", "one_time_tokens", ["expires"])
    op.create_table(
        "uploads",
        sa.Column("drive_uuid", sa.String(36), primary_key=True),
        sa.Column("owner_uuid", sa.String(36), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("importing_node", sa.String(64)))
    op.create_index("ix_uploads_owner_uuid", "uploads", ["owner_uuid"])
    op.create_table(
        "upload_pieces",
        sa.Column("drive_uuid", sa.String(36), sa.ForeignKey("uploads.drive_uuid", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("offset", sa.BigInteger(), primary_key=True),
        sa.Column("length", sa.BigInteger(), nullable=False))
    op.create_table(
        "api_nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False))
    op.create_index("ix_api_nodes_expires", "api_nodes", ["expires"])
    op.create_table(
        "host_leases",
        sa.Column("host", sa.String(64), primary_key=True),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False))
    op.create_table(
        "job_leases",
        sa.Column("job_uuid", sa.String(36), sa.ForeignKey("jobs.uuid", ondelete="CASCADE"), primary_key=True),
        sa.Column("node", sa.String(64), nullable=False))
    op.create_index("ix_job_leases_node", "job_leases", ["node"])


def downgrade() -> None:
    for table in ("job_leases", "host_leases", "api_nodes", "upload_pieces", "uploads", "one_time_tokens",
                  "web_sessions"):
        op.drop_table(table)
