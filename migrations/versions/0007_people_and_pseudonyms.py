"""one notion of a person and of a defender: the roster keyed by issuer and subject, pseudonyms
re-indexed under their canonical form

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 19:00:00

The roster was keyed by the token's subject alone; a person is the identity provider's issuer and
its stable subject, and no two people on the roster may have subjects that are the same name
(haven.identifiers). Existing staff are given the issuer configured now (HAVEN_JWT_ISSUER).

Defender pseudonyms were hashed after case folding only, so the same defender written with
fullwidth letters, an invisible character or a look-alike letter was a new defender. Every stored
request whose details can still be opened is hashed again from its canonical pseudonym (with the
index key and master keys of the settings). A request already erased cannot be opened: it takes
the new hash of a request that had the same old hash, and otherwise keeps its old one.

Organisations get `id_key`, their id's canonical form, unique.
"""
from alembic import context, op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _settings():
    from haven.settings import get_settings

    return context.config.attributes.get("settings") or get_settings()


def upgrade() -> None:
    from haven.identifiers import canonical

    bind = op.get_bind()
    with op.batch_alter_table('staff_members', schema=None) as batch_op:
        batch_op.add_column(sa.Column('issuer', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('subject_key', sa.String(length=200), nullable=True))
    staff = sa.table('staff_members', sa.column('subject', sa.String), sa.column('issuer', sa.String), sa.column('subject_key', sa.String))
    subjects = [row.subject for row in bind.execute(sa.select(staff.c.subject))]
    if subjects:
        issuer = _settings().jwt_issuer
        seen: dict[str, str] = {}
        for subject in subjects:
            key = canonical(subject)
            if key in seen:
                raise RuntimeError(
                    f"the roster holds {seen[key]!r} and {subject!r}, which are the same name: set one of them "
                    "inactive and remove it from staff_members, then migrate again"
                )
            seen[key] = subject
            bind.execute(sa.update(staff).where(staff.c.subject == subject).values(issuer=issuer, subject_key=key))
    with op.batch_alter_table('staff_members', schema=None) as batch_op:
        batch_op.alter_column('issuer', existing_type=sa.String(length=300), nullable=False)
        batch_op.alter_column('subject_key', existing_type=sa.String(length=200), nullable=False)
        batch_op.drop_constraint('pk_staff_members', type_='primary')
        batch_op.create_primary_key('pk_staff_members', ['issuer', 'subject'])
        batch_op.create_unique_constraint('uq_staff_members_person', ['issuer', 'subject_key'])
    with op.batch_alter_table('organisations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('id_key', sa.String(length=64), nullable=True))
    organisations = sa.table('organisations', sa.column('id', sa.String), sa.column('id_key', sa.String))
    named: dict[str, str] = {}
    for organisation_id in [row.id for row in bind.execute(sa.select(organisations.c.id))]:
        key = canonical(organisation_id)
        if key in named:
            raise RuntimeError(
                f"the organisations {named[key]!r} and {organisation_id!r} are the same name: merge them, then migrate again"
            )
        named[key] = organisation_id
        bind.execute(sa.update(organisations).where(organisations.c.id == organisation_id).values(id_key=key))
    with op.batch_alter_table('organisations', schema=None) as batch_op:
        batch_op.alter_column('id_key', existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_organisations_id_key'), ['id_key'])
    with op.batch_alter_table('grant_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('submitted_by_person', sa.String(length=600), nullable=True))
    requests = sa.table('grant_requests', sa.column('id', sa.String), sa.column('submitted_by', sa.String), sa.column('submitted_by_person', sa.String))
    submitters = [row.submitted_by for row in bind.execute(sa.select(requests.c.submitted_by).distinct())]
    if submitters:
        from haven.identifiers import person_key

        issuer = _settings().jwt_issuer
        for subject in submitters:
            bind.execute(
                sa.update(requests).where(requests.c.submitted_by == subject).values(submitted_by_person=person_key(issuer, subject))
            )
    _reindex_pseudonyms(bind)


def _reindex_pseudonyms(bind) -> None:
    requests = sa.table('grant_requests', sa.column('id', sa.String), sa.column('defender_ref', sa.String), sa.column('sensitive', sa.JSON))
    keys = sa.table('case_keys', sa.column('request_id', sa.String), sa.column('master_key_id', sa.String), sa.column('wrapped_key', sa.LargeBinary))
    entries = sa.table('ledger_entries', sa.column('request_id', sa.String), sa.column('defender_ref', sa.String))
    rows = bind.execute(
        sa.select(requests.c.id, requests.c.defender_ref, requests.c.sensitive, keys.c.master_key_id, keys.c.wrapped_key)
        .select_from(requests.outerjoin(keys, keys.c.request_id == requests.c.id))
    ).all()
    if not rows:
        return
    from haven.case_keys import SENSITIVE, MasterKeys, Sealer
    from haven.intake import defender_ref
    from haven.keys import master_keys, pseudonym_index_key

    settings = _settings()
    index_key, provider = pseudonym_index_key(settings), MasterKeys(master_keys(settings))
    new_refs: dict[str, str] = {}  # old hash -> new hash, learnt from the requests that still open
    erased = []
    for row in rows:
        if row.master_key_id is not None and row.wrapped_key is None:
            erased.append(row)  # its pseudonym is gone for good
            continue
        data_key = provider.unwrap(row.id, row.master_key_id, row.wrapped_key) if row.wrapped_key is not None else None
        details = Sealer(row.id, data_key).open(SENSITIVE, row.sensitive)
        pseudonym = details.get("defender", {}).get("pseudonym") if isinstance(details, dict) else None
        if not isinstance(pseudonym, str):
            continue
        new_refs[row.defender_ref] = ref = defender_ref(pseudonym, index_key)
        _set_ref(bind, requests, entries, row, ref)
    # An erased request whose old hash another request of the same defender shared still counts
    # for that defender (the old rule folded case, so the same spelling gave the same old hash).
    for row in erased:
        if row.defender_ref in new_refs:
            _set_ref(bind, requests, entries, row, new_refs[row.defender_ref])


def _set_ref(bind, requests, entries, row, ref: str) -> None:
    if ref != row.defender_ref:
        bind.execute(sa.update(requests).where(requests.c.id == row.id).values(defender_ref=ref))
        bind.execute(sa.update(entries).where(entries.c.request_id == row.id).values(defender_ref=ref))


def downgrade() -> None:
    # The old hashes cannot be made again without the old rule; pseudonyms stay re-indexed.
    with op.batch_alter_table('organisations', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_organisations_id_key'), type_='unique')
        batch_op.drop_column('id_key')
    with op.batch_alter_table('grant_requests', schema=None) as batch_op:
        batch_op.drop_column('submitted_by_person')
    with op.batch_alter_table('staff_members', schema=None) as batch_op:
        batch_op.drop_constraint('uq_staff_members_person', type_='unique')
        batch_op.drop_constraint('pk_staff_members', type_='primary')
        batch_op.create_primary_key('pk_staff_members', ['subject'])
        batch_op.drop_column('subject_key')
        batch_op.drop_column('issuer')
