"""Jobs name their source and target objects in typed columns, not only in resource URIs.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _uuid(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[1]


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_uuid", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("target_uuid", sa.String(length=36), nullable=True))
    jobs = sa.table("jobs", sa.column("uuid", sa.String), sa.column("resources", sa.JSON),
                    sa.column("source_uuid", sa.String), sa.column("target_uuid", sa.String))
    conn = op.get_bind()
    for uuid, resources in conn.execute(sa.select(jobs.c.uuid, jobs.c.resources)).all():
        uuids = [_uuid(uri) for uri in resources or []]
        conn.execute(jobs.update().where(jobs.c.uuid == uuid).values(
            source_uuid=uuids[0] if uuids else None, target_uuid=uuids[1] if len(uuids) > 1 else None))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("target_uuid")
        batch_op.drop_column("source_uuid")
