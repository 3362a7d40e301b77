"""review queue indexes: the scored orders walk an index at 1M candidates

A reviewer's queue sorted by judge probability or by distance to the nearest real cell (ascending or descending,
ties by id) was a sort of the whole class joined to the reviewer's decisions: 0.4-1.4 s per page at 1M candidates
on PostgreSQL. With one index per score and direction the page query (db.decisions._candidate_parts) walks the
index and stops after the page, on SQLite and PostgreSQL alike. ix_images_queue_step lets a queue filtered by
checkpoint step (and GAN run) be counted from the index alone.

Revision ID: 0010_review_indexes
Revises: 0009_evaluate_kind
Create Date: 2026-12-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0010_review_indexes'
down_revision = '0009_evaluate_kind'
branch_labels = None
depends_on = None

QUEUE = ['dataset_id', 'origin', 'class_name']
INDEXES = {
    'ix_images_queue_judge_asc': ('judge_prob', False),
    'ix_images_queue_judge_desc': ('judge_prob', True),
    'ix_images_queue_nearest_asc': ('nearest_real_distance', False),
    'ix_images_queue_nearest_desc': ('nearest_real_distance', True),
}


STEP_INDEX = 'ix_images_queue_step'


def upgrade() -> None:
    for name, (column, descending) in INDEXES.items():
        key = sa.text(f'{column} DESC') if descending else sa.column(column)
        op.create_index(name, 'images', [*QUEUE, key, 'id'])
    op.create_index(STEP_INDEX, 'images', [*QUEUE, 'checkpoint_step', 'gan_run_id', 'id'])


def downgrade() -> None:
    op.drop_index(STEP_INDEX, table_name='images')
    for name in INDEXES:
        op.drop_index(name, table_name='images')
