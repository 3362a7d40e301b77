"""the acceptance model: "feedback" jobs, acceptance_models, acceptance_scores, steered candidates

An acceptance model is trained per dataset on the reviewers' consensus decisions (a "feedback" job). Each
trained model is one row (its version counts up per dataset) and one file under WBC_HOME; its predicted
probability that a person accepts a candidate is kept per (candidate, model) in acceptance_scores. Candidates
sampled with steering record it (images.steered, images.steer_model_id).

Revision ID: 0007_acceptance_model
Revises: 0006
Create Date: 2026-12-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

from db.vocabulary import JOB_KINDS, sql_in

revision = '0007_acceptance_model'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_constraint('ck_runs_kind', type_='check')
        batch.create_check_constraint('ck_runs_kind', sql_in('kind', JOB_KINDS))
    op.create_table(
        'acceptance_models',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('dataset_id', sa.Integer(), sa.ForeignKey('datasets.id', ondelete='CASCADE'), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('trained_on_decisions', sa.Integer(), nullable=False),
        sa.Column('cv_auc', sa.Float(), nullable=True),
        sa.Column('calibration', sa.JSON(), nullable=False),
        sa.Column('summary', sa.JSON(), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('run_id', sa.Integer(), sa.ForeignKey('runs.id', ondelete='SET NULL'), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.UniqueConstraint('dataset_id', 'version', name='uq_acceptance_models_dataset_version'),
    )
    op.create_table(
        'acceptance_scores',
        sa.Column('image_id', sa.Integer(), sa.ForeignKey('images.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('model_id', sa.Integer(), sa.ForeignKey('acceptance_models.id', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('p_accept', sa.Float(), nullable=False),
    )
    op.create_index('ix_acceptance_scores_model', 'acceptance_scores', ['model_id', 'p_accept'])
    # Plain ADD COLUMN (no batch copy, which would drop the images triggers of 0004). steer_model_id carries no
    # foreign key, like nearest_real_id: SQLite cannot drop a column that is part of one in place.
    op.add_column('images', sa.Column('steered', sa.Boolean(), nullable=True))
    op.add_column('images', sa.Column('steer_model_id', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('images', 'steer_model_id')
    op.drop_column('images', 'steered')
    op.drop_index('ix_acceptance_scores_model', table_name='acceptance_scores')
    op.drop_table('acceptance_scores')
    op.drop_table('acceptance_models')
    op.execute("DELETE FROM runs WHERE kind = 'feedback'")
    with op.batch_alter_table('runs') as batch:
        batch.drop_constraint('ck_runs_kind', type_='check')
        batch.create_check_constraint('ck_runs_kind', sql_in('kind', tuple(k for k in JOB_KINDS if k != 'feedback')))
