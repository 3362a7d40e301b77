"""kept sign-ins: sign_in_sessions (one row per signed token a browser holds in its cookie)

A local sign-in survives a reload: the browser keeps a signed, expiring token naming one row here. Signing out
(or disabling the account) sets revoked_at, so the token is refused from then on even before it expires.

Revision ID: 0008_session_tokens
Revises: 0007_acceptance_model
Create Date: 2026-12-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0008_session_tokens'
down_revision = '0007_acceptance_model'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sign_in_sessions',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('user_id', sa.Integer(), sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
    )
    op.create_index('ix_sign_in_sessions_user', 'sign_in_sessions', ['user_id'])


def downgrade() -> None:
    # Every kept sign-in ends: the next reload asks for the password again.
    op.drop_index('ix_sign_in_sessions_user', table_name='sign_in_sessions')
    op.drop_table('sign_in_sessions')
