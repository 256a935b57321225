"""jobs and profile meta

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 00:26:38.056971
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('jobs',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('owner_uuid', sa.String(length=36), nullable=False),
    sa.Column('parent_uuid', sa.String(length=36), nullable=True),
    sa.Column('operation', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('progress', sa.Integer(), nullable=False),
    sa.Column('resources', sa.JSON(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_modified', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_uuid'], ['users.uuid'], ),
    sa.ForeignKeyConstraint(['parent_uuid'], ['jobs.uuid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('uuid')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_last_modified'), ['last_modified'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_owner_uuid'), ['owner_uuid'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_parent_uuid'), ['parent_uuid'], unique=False)

    op.create_table('job_links',
    sa.Column('job_uuid', sa.String(length=36), nullable=False),
    sa.Column('res_uuid', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['job_uuid'], ['jobs.uuid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_uuid', 'res_uuid')
    )
    with op.batch_alter_table('job_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_links_res_uuid'), ['res_uuid'], unique=False)

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('meta', sa.JSON(), nullable=False, server_default='{}'))




def downgrade() -> None:

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('meta')

    with op.batch_alter_table('job_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_links_res_uuid'))

    op.drop_table('job_links')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_parent_uuid'))
        batch_op.drop_index(batch_op.f('ix_jobs_owner_uuid'))
        batch_op.drop_index(batch_op.f('ix_jobs_last_modified'))

    op.drop_table('jobs')

