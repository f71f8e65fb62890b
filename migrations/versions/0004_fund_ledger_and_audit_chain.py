"""ledger and audit chain

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 11:28:00.471874
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_chain_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_chain_head'))
    )
    op.create_table('budget_allocations',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('starts_on', sa.Date(), nullable=False),
    sa.Column('ends_on', sa.Date(), nullable=False),
    sa.Column('amount_base_minor', sa.BigInteger(), nullable=False),
    sa.Column('reserved_base_minor', sa.BigInteger(), nullable=False),
    sa.Column('paid_base_minor', sa.BigInteger(), nullable=False),
    sa.Column('set_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_budget_allocations')),
    sa.UniqueConstraint('category', 'starts_on', name='uq_budget_allocations_category_start')
    )
    op.create_table('ledger_entries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('entry_key', sa.String(length=200), nullable=False),
    sa.Column('allocation_id', sa.String(length=64), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('request_id', sa.String(length=40), nullable=True),
    sa.Column('tranche', sa.Integer(), nullable=True),
    sa.Column('country', sa.String(length=2), nullable=True),
    sa.Column('defender_ref', sa.String(length=64), nullable=True),
    sa.Column('amount_base_minor', sa.BigInteger(), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('rate_to_base', sa.String(length=40), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['allocation_id'], ['budget_allocations.id'], name=op.f('fk_ledger_entries_allocation_id_budget_allocations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entries')),
    sa.UniqueConstraint('entry_key', name=op.f('uq_ledger_entries_entry_key'))
    )
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_entries_allocation_id'), ['allocation_id'], unique=False)
        batch_op.create_index('ix_ledger_entries_occurred', ['occurred_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_entries_request_id'), ['request_id'], unique=False)

    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chain_seq', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('hash', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint('uq_audit_events_chain_seq', ['chain_seq'])

    with op.batch_alter_table('budget_reservations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allocation_id', sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_budget_reservations_allocation_id_budget_allocations'), 'budget_allocations', ['allocation_id'], ['id'])

    _chain_existing_audit_events()


def _chain_existing_audit_events(batch: int = 1000) -> None:
    """Chains the audit events written before the chain existed, in the order they were written
    (id order), and records the head: from here on every event is appended after it. The hash is
    the application's own (`event_hash`): a chain has one canonical form."""
    from types import SimpleNamespace

    from haven.audit_chain import GENESIS, HEAD_ID, event_hash
    from haven.db.models import UTCDateTime

    events = sa.table(
        'audit_events',
        sa.column('id', sa.Integer), sa.column('request_id', sa.String), sa.column('seq', sa.Integer),
        sa.column('action', sa.String), sa.column('actor', sa.String), sa.column('roles', sa.JSON),
        sa.column('status_from', sa.String), sa.column('status_to', sa.String), sa.column('facts', sa.JSON),
        sa.column('occurred_at', UTCDateTime()), sa.column('recorded_at', UTCDateTime()),
        sa.column('chain_seq', sa.BigInteger), sa.column('prev_hash', sa.String), sa.column('hash', sa.String),
    )
    content = [c for c in events.c if c.name not in ('chain_seq', 'prev_hash', 'hash')]
    link = (
        events.update()
        .where(events.c.id == sa.bindparam('event_id'))
        .values(chain_seq=sa.bindparam('link_seq'), prev_hash=sa.bindparam('link_prev'), hash=sa.bindparam('link_hash'))
    )
    connection = op.get_bind()
    seq, prev_hash, after = 0, GENESIS, 0
    while rows := connection.execute(sa.select(*content).where(events.c.id > after).order_by(events.c.id).limit(batch)).all():
        links = []
        for row in rows:
            seq += 1
            event = SimpleNamespace(**row._mapping, chain_seq=seq, prev_hash=prev_hash)
            links.append({'event_id': row.id, 'link_seq': seq, 'link_prev': prev_hash, 'link_hash': event_hash(event)})
            prev_hash = links[-1]['link_hash']
        connection.execute(link, links)
        after = rows[-1].id
    head = sa.table('audit_chain_head', sa.column('id', sa.Integer), sa.column('seq', sa.BigInteger), sa.column('hash', sa.String))
    connection.execute(head.insert().values(id=HEAD_ID, seq=seq, hash=prev_hash))



def downgrade() -> None:
    with op.batch_alter_table('budget_reservations', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_budget_reservations_allocation_id_budget_allocations'), type_='foreignkey')
        batch_op.drop_column('allocation_id')

    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_constraint('uq_audit_events_chain_seq', type_='unique')
        batch_op.drop_column('hash')
        batch_op.drop_column('prev_hash')
        batch_op.drop_column('chain_seq')

    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_entries_request_id'))
        batch_op.drop_index('ix_ledger_entries_occurred')
        batch_op.drop_index(batch_op.f('ix_ledger_entries_allocation_id'))

    op.drop_table('ledger_entries')
    op.drop_table('budget_allocations')
    op.drop_table('audit_chain_head')
