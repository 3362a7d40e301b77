"""every long computation is a job: new run kinds; who started and who cancelled each run; job executor

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:00:00
"""

from alembic import op
import sqlalchemy as sa

from db.vocabulary import RUN_STATUSES, sql_in

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_OLD_KINDS = ('gan', 'classifier', 'selftest')
# The kinds as they were at this revision (later kinds come with their own migration, e.g. 0005).
_KINDS = ('gan', 'classifier', 'generate', 'score', 'quality', 'judge', 'embedding', 'selftest')


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_constraint('ck_runs_kind', type_='check')
        batch.create_check_constraint('ck_runs_kind', sql_in('kind', _KINDS))
        batch.add_column(sa.Column('started_by', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('cancelled_by', sa.String(length=64), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        # local: a subprocess on the launching machine; ray: a Ray job (external_id is its submission id)
        batch.add_column(sa.Column('executor', sa.String(length=20), nullable=False, server_default='local'))
        batch.add_column(sa.Column('external_id', sa.String(length=200), nullable=True))
    # The status constraint is re-stated from the vocabulary so both are provably the same words.
    with op.batch_alter_table('runs') as batch:
        batch.drop_constraint('ck_runs_status', type_='check')
        batch.create_check_constraint('ck_runs_status', sql_in('status', RUN_STATUSES))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('external_id')
        batch.drop_column('executor')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('cancelled_by')
        batch.drop_column('started_by')
        batch.drop_constraint('ck_runs_kind', type_='check')
        batch.create_check_constraint('ck_runs_kind', sql_in('kind', _OLD_KINDS))
