"""users and roles, adjudication decisions, per-dataset review settings, blinded realism test items

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 00:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'users',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('password_hash', sa.String(length=200), nullable=False),
        sa.Column('role', sa.String(length=20), nullable=False),
        sa.Column('display_name', sa.String(length=200), nullable=True),
        sa.Column('source', sa.String(length=10), nullable=False, server_default='local'),
        sa.Column('disabled', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'reviewer', 'viewer')", name='ck_users_role'),
        sa.CheckConstraint("source IN ('local', 'oidc')", name='ck_users_source'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('username'),
    )
    op.create_table(
        'blind_items',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('dataset_id', sa.Integer(), nullable=False),
        sa.Column('image_id', sa.Integer(), nullable=False),
        sa.Column('reviewer', sa.String(length=100), nullable=False),
        sa.Column('position', sa.Float(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('image_id', 'reviewer', name='uq_blind_items_image_reviewer'),
    )
    op.create_index('ix_blind_items_reviewer', 'blind_items', ['dataset_id', 'reviewer'], unique=False)

    # Plain ADD COLUMN, never batch mode: a batch "move and copy" of decisions would drop the
    # append-only triggers with the old table. SQLite adds a column with a constant default in place.
    op.add_column('decisions', sa.Column('adjudication', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index('ix_decisions_current', 'decisions', ['image_id', 'reviewer', 'adjudication', 'id'],
                    unique=False)
    op.add_column('datasets', sa.Column('review_settings', sa.JSON(), nullable=False, server_default='{}'))


def downgrade() -> None:
    op.drop_column('datasets', 'review_settings')
    op.drop_index('ix_decisions_current', table_name='decisions')
    # SQLite >= 3.35 drops a column in place (keeping the triggers); adjudication rows become plain votes.
    op.drop_column('decisions', 'adjudication')
    op.drop_index('ix_blind_items_reviewer', table_name='blind_items')
    op.drop_table('blind_items')
    op.drop_table('users')
