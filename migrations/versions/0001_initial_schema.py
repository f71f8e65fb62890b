"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 16:54:34.852620
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=40), nullable=True),
    sa.Column('seq', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('roles', sa.JSON(), nullable=False),
    sa.Column('status_from', sa.String(length=32), nullable=True),
    sa.Column('status_to', sa.String(length=32), nullable=True),
    sa.Column('facts', sa.JSON(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
    sa.UniqueConstraint('request_id', 'seq', name='uq_audit_events_request_seq')
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_request_id'), ['request_id'], unique=False)

    op.create_table('notifications',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('dedupe_key', sa.String(length=200), nullable=False),
    sa.Column('request_id', sa.String(length=40), nullable=True),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('audience', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_notifications_dedupe_key'))
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notifications_request_id'), ['request_id'], unique=False)

    op.create_table('organisations',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('trust_level', sa.String(length=16), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organisations'))
    )
    op.create_table('policy_versions',
    sa.Column('hash', sa.String(length=80), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('hash', name=op.f('pk_policy_versions'))
    )
    op.create_table('grant_requests',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('organisation_id', sa.String(length=64), nullable=False),
    sa.Column('submitted_by', sa.String(length=200), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('body_hash', sa.String(length=80), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('urgency', sa.String(length=16), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('threat_level', sa.String(length=16), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('amount_base_minor', sa.BigInteger(), nullable=False),
    sa.Column('tranche_count', sa.Integer(), nullable=False),
    sa.Column('rail', sa.String(length=16), nullable=False),
    sa.Column('policy_hash', sa.String(length=80), nullable=False),
    sa.Column('defender_ref', sa.String(length=64), nullable=False),
    sa.Column('sensitive', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('status_seq', sa.Integer(), nullable=False),
    sa.Column('risk_score', sa.Integer(), nullable=True),
    sa.Column('risk_tier', sa.String(length=16), nullable=True),
    sa.Column('screening_hit', sa.Boolean(), nullable=True),
    sa.Column('decision_due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('escalated', sa.Boolean(), nullable=False),
    sa.Column('granted_minor', sa.BigInteger(), nullable=True),
    sa.Column('granted_base_minor', sa.BigInteger(), nullable=True),
    sa.Column('current_tranche', sa.Integer(), nullable=True),
    sa.Column('report_due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('follow_up_overdue', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_grant_requests_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['policy_hash'], ['policy_versions.hash'], name=op.f('fk_grant_requests_policy_hash_policy_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grant_requests')),
    sa.UniqueConstraint('organisation_id', 'idempotency_key', name='uq_grant_requests_idempotency')
    )
    with op.batch_alter_table('grant_requests', schema=None) as batch_op:
        batch_op.create_index('ix_grant_requests_defender', ['defender_ref', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_grant_requests_organisation_id'), ['organisation_id'], unique=False)
        batch_op.create_index('ix_grant_requests_queue', ['status', 'decision_due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_grant_requests_status'), ['status'], unique=False)

    op.create_table('budget_reservations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=40), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('amount_base_minor', sa.BigInteger(), nullable=False),
    sa.Column('released_base_minor', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reserved_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['request_id'], ['grant_requests.id'], name=op.f('fk_budget_reservations_request_id_grant_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_budget_reservations')),
    sa.UniqueConstraint('request_id', 'number', name='uq_budget_reservations_request_number')
    )
    with op.batch_alter_table('budget_reservations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_budget_reservations_request_id'), ['request_id'], unique=False)

    op.create_table('case_messages',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=40), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('author', sa.String(length=200), nullable=False),
    sa.Column('tranche', sa.Integer(), nullable=True),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('written_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['grant_requests.id'], name=op.f('fk_case_messages_request_id_grant_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_messages')),
    sa.UniqueConstraint('request_id', 'seq', name='uq_case_messages_request_seq')
    )
    with op.batch_alter_table('case_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_messages_request_id'), ['request_id'], unique=False)

    op.create_table('decisions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=40), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('roles', sa.JSON(), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['grant_requests.id'], name=op.f('fk_decisions_request_id_grant_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_decisions')),
    sa.UniqueConstraint('request_id', 'seq', name='uq_decisions_request_seq')
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_decisions_request_id'), ['request_id'], unique=False)

    op.create_table('follow_up_reports',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=40), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('receipts', sa.JSON(), nullable=False),
    sa.Column('submitted_by', sa.String(length=200), nullable=False),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('accepted_by', sa.String(length=200), nullable=True),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acceptance_note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['request_id'], ['grant_requests.id'], name=op.f('fk_follow_up_reports_request_id_grant_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_follow_up_reports')),
    sa.UniqueConstraint('request_id', name=op.f('uq_follow_up_reports_request_id'))
    )
    op.create_table('payments',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=40), nullable=False),
    sa.Column('tranche', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=120), nullable=False),
    sa.Column('rail', sa.String(length=16), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('amount_base_minor', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=True),
    sa.Column('paid_on', sa.Date(), nullable=True),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('recorded_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['grant_requests.id'], name=op.f('fk_payments_request_id_grant_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_payments_idempotency_key')),
    sa.UniqueConstraint('request_id', 'tranche', name='uq_payments_request_tranche')
    )
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payments_request_id'), ['request_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payments_request_id'))

    op.drop_table('payments')
    op.drop_table('follow_up_reports')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_decisions_request_id'))

    op.drop_table('decisions')
    with op.batch_alter_table('case_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_messages_request_id'))

    op.drop_table('case_messages')
    with op.batch_alter_table('budget_reservations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_budget_reservations_request_id'))

    op.drop_table('budget_reservations')
    with op.batch_alter_table('grant_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_grant_requests_status'))
        batch_op.drop_index('ix_grant_requests_queue')
        batch_op.drop_index(batch_op.f('ix_grant_requests_organisation_id'))
        batch_op.drop_index('ix_grant_requests_defender')

    op.drop_table('grant_requests')
    op.drop_table('policy_versions')
    op.drop_table('organisations')
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notifications_request_id'))

    op.drop_table('notifications')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_request_id'))

    op.drop_table('audit_events')
