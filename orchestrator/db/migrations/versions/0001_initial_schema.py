"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28 00:14:09.597914
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('users',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('clone_naming', sa.String(length=16), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('uuid'),
    sa.UniqueConstraint('email')
    )
    op.create_table('api_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_uuid', sa.String(length=36), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_uuid'], ['users.uuid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash')
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_user_uuid'), ['user_uuid'], unique=False)

    op.create_table('drives',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('owner_uuid', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('media', sa.String(length=8), nullable=False),
    sa.Column('storage_type', sa.String(length=16), nullable=False),
    sa.Column('affinities', sa.JSON(), nullable=False),
    sa.Column('allow_multimount', sa.Boolean(), nullable=False),
    sa.Column('iops', sa.BigInteger(), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('licenses', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('avoid', sa.JSON(), nullable=False),
    sa.Column('pool', sa.String(length=256), nullable=True),
    sa.Column('volume', sa.String(length=256), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_uuid'], ['users.uuid'], ),
    sa.PrimaryKeyConstraint('uuid')
    )
    with op.batch_alter_table('drives', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_drives_created'), ['created'], unique=False)
        batch_op.create_index(batch_op.f('ix_drives_owner_uuid'), ['owner_uuid'], unique=False)

    op.create_table('servers',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('owner_uuid', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=1024), nullable=False),
    sa.Column('cpu', sa.BigInteger(), nullable=False),
    sa.Column('mem', sa.BigInteger(), nullable=False),
    sa.Column('smp', sa.BigInteger(), nullable=False),
    sa.Column('smp_auto', sa.Boolean(), nullable=False),
    sa.Column('vnc_password', sa.String(length=64), nullable=False),
    sa.Column('cpu_type', sa.String(length=16), nullable=False),
    sa.Column('hypervisor', sa.String(length=16), nullable=False),
    sa.Column('cpu_model', sa.String(length=32), nullable=True),
    sa.Column('cpus_instead_of_cores', sa.Boolean(), nullable=False),
    sa.Column('enable_numa', sa.Boolean(), nullable=False),
    sa.Column('hv_relaxed', sa.Boolean(), nullable=False),
    sa.Column('hv_tsc', sa.Boolean(), nullable=False),
    sa.Column('context', sa.Boolean(), nullable=False),
    sa.Column('auto_start', sa.Boolean(), nullable=False),
    sa.Column('is_grey', sa.Boolean(), nullable=False),
    sa.Column('allocation_pool', sa.String(length=256), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('requirements', sa.JSON(), nullable=False),
    sa.Column('nics', sa.JSON(), nullable=False),
    sa.Column('gpus', sa.JSON(), nullable=False),
    sa.Column('epcs', sa.JSON(), nullable=False),
    sa.Column('pubkeys', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('host', sa.String(length=256), nullable=True),
    sa.Column('active_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_uuid'], ['users.uuid'], ),
    sa.PrimaryKeyConstraint('uuid')
    )
    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_servers_created'), ['created'], unique=False)
        batch_op.create_index(batch_op.f('ix_servers_owner_uuid'), ['owner_uuid'], unique=False)

    op.create_table('tags',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('owner_uuid', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=1024), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_uuid'], ['users.uuid'], ),
    sa.PrimaryKeyConstraint('uuid')
    )
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tags_created'), ['created'], unique=False)
        batch_op.create_index(batch_op.f('ix_tags_owner_uuid'), ['owner_uuid'], unique=False)

    op.create_table('server_drives',
    sa.Column('server_uuid', sa.String(length=36), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('drive_uuid', sa.String(length=36), nullable=False),
    sa.Column('device', sa.String(length=8), nullable=False),
    sa.Column('dev_channel', sa.String(length=16), nullable=False),
    sa.Column('boot_order', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['drive_uuid'], ['drives.uuid'], ),
    sa.ForeignKeyConstraint(['server_uuid'], ['servers.uuid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('server_uuid', 'position')
    )
    with op.batch_alter_table('server_drives', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_drives_drive_uuid'), ['drive_uuid'], unique=False)

    op.create_table('tag_links',
    sa.Column('tag_uuid', sa.String(length=36), nullable=False),
    sa.Column('res_uuid', sa.String(length=64), nullable=False),
    sa.Column('res_type', sa.String(length=16), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['tag_uuid'], ['tags.uuid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tag_uuid', 'res_uuid')
    )
    with op.batch_alter_table('tag_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tag_links_res_uuid'), ['res_uuid'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('tag_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tag_links_res_uuid'))

    op.drop_table('tag_links')
    with op.batch_alter_table('server_drives', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_drives_drive_uuid'))

    op.drop_table('server_drives')
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tags_owner_uuid'))
        batch_op.drop_index(batch_op.f('ix_tags_created'))

    op.drop_table('tags')
    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_servers_owner_uuid'))
        batch_op.drop_index(batch_op.f('ix_servers_created'))

    op.drop_table('servers')
    with op.batch_alter_table('drives', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_drives_owner_uuid'))
        batch_op.drop_index(batch_op.f('ix_drives_created'))

    op.drop_table('drives')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_user_uuid'))

    op.drop_table('api_tokens')
    op.drop_table('users')

