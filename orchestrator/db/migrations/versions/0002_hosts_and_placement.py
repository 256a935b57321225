"""hosts and placement

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 00:19:34.881038
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('hosts',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=512), nullable=False),
    sa.Column('key_file', sa.String(length=1024), nullable=True),
    sa.Column('known_hosts', sa.String(length=1024), nullable=True),
    sa.Column('agent_command', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('facts', sa.JSON(), nullable=False),
    sa.Column('last_heartbeat', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('drives', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host', sa.String(length=64), nullable=True))

    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.alter_column('host',
               existing_type=sa.VARCHAR(length=256),
               type_=sa.String(length=64),
               existing_nullable=True)
        batch_op.create_index(batch_op.f('ix_servers_host'), ['host'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_servers_host'))
        batch_op.alter_column('host',
               existing_type=sa.String(length=64),
               type_=sa.VARCHAR(length=256),
               existing_nullable=True)

    with op.batch_alter_table('drives', schema=None) as batch_op:
        batch_op.drop_column('host')

    op.drop_table('hosts')

