"""case keys: a data key per request, wrapped by a master key

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:55:00
"""
from alembic import op
import sqlalchemy as sa



revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Requests stored before this revision keep their details as they were (readable, unsealed);
    # every request from here on is sealed with its own key.
    op.create_table('case_keys',
    sa.Column('request_id', sa.String(length=40), nullable=False),
    sa.Column('master_key_id', sa.String(length=64), nullable=False),
    sa.Column('wrapped_key', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('destroyed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('destroyed_why', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['request_id'], ['grant_requests.id'], name=op.f('fk_case_keys_request_id_grant_requests')),
    sa.PrimaryKeyConstraint('request_id', name=op.f('pk_case_keys'))
    )


def downgrade() -> None:
    op.drop_table('case_keys')
