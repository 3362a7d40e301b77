"""acceptance models count their score writes: a process may then keep the scores it read, and knows when not to

The decided queue by acceptance needs the latest model's scores of the reviewer's decided candidates (about 2,500
at 1M candidates): read by key on every page, that was ~20 ms at PostgreSQL, or two walks of the score index of
~25k entries each (~30 ms, "most uncertain"). A model's score of a candidate never changes (db.acceptance.
set_scores writes the model's own prediction, a function of the two), but a candidate it had not scored may be
scored later. score_writes counts set_scores calls per model, in the same transaction as the scores, so a process
that remembers which candidates had no score knows when that may have changed (db.acceptance.ScoreMemo).

Revision ID: 0013_acceptance_score_writes
Revises: 0012_blind_items_class
Create Date: 2026-12-06 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0013_acceptance_score_writes'
down_revision = '0012_blind_items_class'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('acceptance_models') as batch:
        batch.add_column(sa.Column('score_writes', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('acceptance_models') as batch:
        batch.drop_column('score_writes')
