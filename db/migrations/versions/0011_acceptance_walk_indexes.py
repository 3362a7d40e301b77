"""acceptance-score indexes whose order is the queue's: "most likely" and "most uncertain" walk them at 1M

The Review page's acceptance orders sort a class by p_accept with ties by candidate id. ix_acceptance_scores_model
(model_id, p_accept) gave PostgreSQL no order for the ties, so it read and sorted all of a model's scores: 130 ms
("most likely") and 370 ms ("most uncertain", two half-ranges) per page at 1M candidates. These two indexes carry
the exact orders the page walks (db.decisions._acceptance_parts): p_accept descending and ascending, ties by
image id ascending, so the walk stops after the page on SQLite and PostgreSQL alike.

Revision ID: 0011_acceptance_walk_indexes
Revises: 0010_review_indexes
Create Date: 2026-12-02 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0011_acceptance_walk_indexes'
down_revision = '0010_review_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_acceptance_scores_asc', 'acceptance_scores', ['model_id', 'p_accept', 'image_id'])
    op.create_index('ix_acceptance_scores_desc', 'acceptance_scores', ['model_id', sa.text('p_accept DESC'),
                                                                        'image_id'])
    op.drop_index('ix_acceptance_scores_model', table_name='acceptance_scores')


def downgrade() -> None:
    op.create_index('ix_acceptance_scores_model', 'acceptance_scores', ['model_id', 'p_accept'])
    op.drop_index('ix_acceptance_scores_desc', table_name='acceptance_scores')
    op.drop_index('ix_acceptance_scores_asc', table_name='acceptance_scores')
