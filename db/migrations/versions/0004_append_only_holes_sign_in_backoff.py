"""append-only holes closed (INSERT OR REPLACE, TRUNCATE, deleting decided images); failed sign-ins for back-off

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 00:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# The same words as 0001's guard, so callers can match one message on both databases.
_DECISIONS_MESSAGE = "decisions are append-only: record a new decision instead"
_IMAGES_MESSAGE = "images with review decisions cannot be deleted or renumbered: decisions are kept forever"


def upgrade() -> None:
    op.create_table(
        'sign_in_failures',
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('last_failure_at', sa.DateTime(), nullable=False),
        sa.Column('locked_until', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('key'),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _sqlite_guards()
    elif dialect == "postgresql":
        _postgresql_guards()


def _sqlite_guards() -> None:
    # INSERT OR REPLACE resolves the primary-key conflict by deleting the old row, and that delete fires no
    # DELETE trigger (recursive_triggers is off): the existing guard never saw it. A new row's id is -1 here when
    # SQLite assigns it, so ordinary inserts pass.
    op.execute(
        "CREATE TRIGGER decisions_no_replace BEFORE INSERT ON decisions "
        "WHEN EXISTS (SELECT 1 FROM decisions WHERE id = NEW.id) "
        f"BEGIN SELECT RAISE(ABORT, '{_DECISIONS_MESSAGE}'); END"
    )
    # Migrations (and anyone with `PRAGMA foreign_keys=OFF`) run without the ON DELETE RESTRICT of
    # decisions.image_id; these triggers hold either way. They are lost if a later batch migration recreates
    # `images`: such a migration must create them again.
    op.execute(
        "CREATE TRIGGER images_keep_decided BEFORE DELETE ON images "
        "WHEN EXISTS (SELECT 1 FROM decisions WHERE image_id = OLD.id) "
        f"BEGIN SELECT RAISE(ABORT, '{_IMAGES_MESSAGE}'); END"
    )
    op.execute(
        "CREATE TRIGGER images_keep_decided_id BEFORE UPDATE OF id ON images "
        "WHEN NEW.id IS NOT OLD.id AND EXISTS (SELECT 1 FROM decisions WHERE image_id = OLD.id) "
        f"BEGIN SELECT RAISE(ABORT, '{_IMAGES_MESSAGE}'); END"
    )


def _postgresql_guards() -> None:
    # The guard now raises an integrity error (SQLSTATE 23001, restrict_violation), as SQLite's RAISE(ABORT)
    # does, instead of a generic P0001: the same exception class on both databases.
    op.execute(
        "CREATE OR REPLACE FUNCTION decisions_append_only() RETURNS trigger AS $$ "
        f"BEGIN RAISE EXCEPTION '{_DECISIONS_MESSAGE}' USING ERRCODE = 'restrict_violation'; END; "
        "$$ LANGUAGE plpgsql"
    )
    # Row triggers never see TRUNCATE; a statement trigger does (also TRUNCATE ... CASCADE from images).
    op.execute(
        "CREATE TRIGGER decisions_no_truncate BEFORE TRUNCATE ON decisions "
        "FOR EACH STATEMENT EXECUTE FUNCTION decisions_append_only()"
    )
    op.execute(
        "CREATE FUNCTION images_keep_decided() RETURNS trigger AS $$ BEGIN "
        "IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN RETURN NEW; END IF; "
        "IF EXISTS (SELECT 1 FROM decisions WHERE image_id = OLD.id) THEN "
        f"RAISE EXCEPTION '{_IMAGES_MESSAGE}' USING ERRCODE = 'restrict_violation'; END IF; "
        "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END; $$ LANGUAGE plpgsql"
    )
    op.execute(
        "CREATE TRIGGER images_keep_decided BEFORE DELETE OR UPDATE OF id ON images "
        "FOR EACH ROW EXECUTE FUNCTION images_keep_decided()"
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("decisions_no_replace", "images_keep_decided", "images_keep_decided_id"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS images_keep_decided ON images")
        op.execute("DROP FUNCTION IF EXISTS images_keep_decided()")
        op.execute("DROP TRIGGER IF EXISTS decisions_no_truncate ON decisions")
        op.execute(
            "CREATE OR REPLACE FUNCTION decisions_append_only() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{_DECISIONS_MESSAGE}'; END; $$ LANGUAGE plpgsql"
        )
    op.drop_table('sign_in_failures')
