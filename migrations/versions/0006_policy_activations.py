"""policy activations: which policy version new requests are pinned to

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:20:00
"""
from alembic import op
import sqlalchemy as sa



revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No rows yet: the API activates its policy file on its first start under this revision.
    op.create_table('policy_activations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('policy_hash', sa.String(length=80), nullable=False),
    sa.Column('activated_by', sa.String(length=200), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('note', sa.String(length=2000), nullable=True),
    sa.ForeignKeyConstraint(['policy_hash'], ['policy_versions.hash'], name=op.f('fk_policy_activations_policy_hash_policy_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_activations'))
    )


def downgrade() -> None:
    op.drop_table('policy_activations')
