"""deleting a dataset or run archives it: archived_at / archived_by on datasets and runs

A "deleted" dataset or run is hidden from lists and pickers but kept, so that review decisions (append-only,
and images with decisions cannot be deleted) stay in the audit with the cells they judged.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TABLES = ('datasets', 'runs')


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy): SQLite adds a nullable column in place, so no table is recreated and the
    # images/decisions triggers of 0004 are untouched.
    for table in TABLES:
        op.add_column(table, sa.Column('archived_at', sa.DateTime(), nullable=True))
        op.add_column(table, sa.Column('archived_by', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Archived rows become visible again (the data is kept); SQLite >= 3.35 drops a column in place.
    for table in TABLES:
        op.drop_column(table, 'archived_by')
        op.drop_column(table, 'archived_at')
