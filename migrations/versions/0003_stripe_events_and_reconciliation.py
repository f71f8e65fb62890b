"""stripe events, reversals and reconciliation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 10:10:07.541334
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reconciliation_runs',
    sa.Column('id', sa.String(length=100), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('transfers_seen', sa.Integer(), nullable=False),
    sa.Column('payments_seen', sa.Integer(), nullable=False),
    sa.Column('mismatches', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reconciliation_runs'))
    )
    with op.batch_alter_table('reconciliation_runs', schema=None) as batch_op:
        batch_op.create_index('ix_reconciliation_runs_day', ['day', 'started_at'], unique=False)

    op.create_table('stripe_events',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('object_id', sa.String(length=255), nullable=True),
    sa.Column('request_id', sa.String(length=40), nullable=True),
    sa.Column('tranche', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stripe_events'))
    )
    with op.batch_alter_table('stripe_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stripe_events_object_id'), ['object_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_stripe_events_request_id'), ['request_id'], unique=False)

    op.create_table('reconciliation_findings',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('transfer_id', sa.String(length=255), nullable=True),
    sa.Column('request_id', sa.String(length=40), nullable=True),
    sa.Column('tranche', sa.Integer(), nullable=True),
    sa.Column('ledger_amount_minor', sa.BigInteger(), nullable=True),
    sa.Column('stripe_amount_minor', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('found_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['reconciliation_runs.id'], name=op.f('fk_reconciliation_findings_run_id_reconciliation_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reconciliation_findings')),
    sa.UniqueConstraint('run_id', 'kind', 'subject', name='uq_reconciliation_findings_subject')
    )
    with op.batch_alter_table('reconciliation_findings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reconciliation_findings_request_id'), ['request_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reconciliation_findings_run_id'), ['run_id'], unique=False)

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reversed_minor', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('reversed_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_column('reversed_at')
        batch_op.drop_column('reversed_minor')

    with op.batch_alter_table('reconciliation_findings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reconciliation_findings_run_id'))
        batch_op.drop_index(batch_op.f('ix_reconciliation_findings_request_id'))

    op.drop_table('reconciliation_findings')
    with op.batch_alter_table('stripe_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stripe_events_request_id'))
        batch_op.drop_index(batch_op.f('ix_stripe_events_object_id'))

    op.drop_table('stripe_events')
    with op.batch_alter_table('reconciliation_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_reconciliation_runs_day')

    op.drop_table('reconciliation_runs')
