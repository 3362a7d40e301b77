"""blind items carry their cell's class: a blind reviewer's queue reads one class's items from an index

A reviewer in blind mode gets their blind real cells of the class mixed into every queue page. Finding them meant
reading all of the reviewer's blind items (12,000 at 1M candidates, every class) and each one's image for its class,
half of a blind page's cost (about 20 of 40 ms). The class is fixed when the item is made (a real cell's class never
changes), so it is stored on the item and ix_blind_items_class gives a class's items, with their hash positions,
from the index alone. Existing items get their image's class here; db.decisions.add_blind_items fills it after.

Revision ID: 0012_blind_items_class
Revises: 0011_acceptance_walk_indexes
Create Date: 2026-12-03 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0012_blind_items_class'
down_revision = '0011_acceptance_walk_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('blind_items') as batch:
        batch.add_column(sa.Column('class_name', sa.String(length=100), nullable=True))
    # blind_items is not append-only (only decisions are): filling the new column in place is allowed.
    op.execute("UPDATE blind_items SET class_name = (SELECT images.class_name FROM images "
               "WHERE images.id = blind_items.image_id)")
    op.create_index('ix_blind_items_class', 'blind_items',
                    ['dataset_id', 'reviewer', 'class_name', 'image_id', 'position'])


def downgrade() -> None:
    op.drop_index('ix_blind_items_class', table_name='blind_items')
    with op.batch_alter_table('blind_items') as batch:
        batch.drop_column('class_name')
