"""a model evaluated on another dataset runs as a job: the "evaluate" run kind

Revision ID: 0009_evaluate_kind
Revises: 0008_session_tokens
Create Date: 2026-12-01 00:00:00
"""

from alembic import op

from db.vocabulary import JOB_KINDS, sql_in

revision = '0009_evaluate_kind'
down_revision = '0008_session_tokens'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_constraint('ck_runs_kind', type_='check')
        batch.create_check_constraint('ck_runs_kind', sql_in('kind', JOB_KINDS))


def downgrade() -> None:
    op.execute("DELETE FROM runs WHERE kind = 'evaluate'")
    with op.batch_alter_table('runs') as batch:
        batch.drop_constraint('ck_runs_kind', type_='check')
        batch.create_check_constraint('ck_runs_kind', sql_in('kind', tuple(k for k in JOB_KINDS if k != 'evaluate')))
