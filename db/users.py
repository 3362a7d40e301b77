"""Queries on users. Hashing, validation and permissions live in wbc_core.auth; this module only stores."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from db.engine import read_session, write_session
from db.models import User as UserModel


class UserExists(ValueError):
    """A user with that name already exists."""


class UserNotFound(LookupError):
    """No user with that name."""


@dataclass(frozen=True)
class User:
    """A signed-in person as the rest of the code sees them (never carries the password hash)."""

    id: int
    username: str
    role: str  # admin | reviewer | viewer
    display_name: str | None
    source: str  # local | oidc
    disabled: bool
    created_at: datetime

    @property
    def label(self) -> str:
        """Name to show on screen."""
        return self.display_name or self.username


def _user(row: UserModel) -> User:
    return User(row.id, row.username, row.role, row.display_name, row.source, bool(row.disabled), row.created_at)


def insert_user(username: str, password_hash: str, role: str, display_name: str | None = None,
                source: str = "local") -> User:
    """Insert a user; raise UserExists if the name is taken."""
    try:
        with write_session() as s:
            if s.scalar(select(UserModel.id).where(UserModel.username == username)) is not None:
                raise UserExists(f"a user named {username!r} already exists")
            row = UserModel(username=username, password_hash=password_hash, role=role, display_name=display_name,
                            source=source, disabled=False)
            s.add(row)
            s.flush()
            return _user(row)
    except IntegrityError as exc:  # a concurrent insert of the same name (other databases than SQLite)
        raise UserExists(f"a user named {username!r} already exists") from exc


def insert_first_admin_or(username: str, role: str, display_name: str | None, source: str) -> User:
    """Return the user with that name, or create it: as admin if nobody exists yet, else with role.

    One write transaction: with SQLite's lock taken at BEGIN, two simultaneous first logins cannot
    both see an empty table and both become admin.
    """
    with write_session() as s:
        row = s.scalar(select(UserModel).where(UserModel.username == username))
        if row is not None:
            return _user(row)
        first = not s.scalar(select(func.count()).select_from(UserModel))
        row = UserModel(username=username, password_hash="", role="admin" if first else role,
                        display_name=display_name, source=source, disabled=False)
        s.add(row)
        s.flush()
        return _user(row)


def get_user(username: str) -> User | None:
    """The user with that name, or None."""
    with read_session() as s:
        row = s.scalar(select(UserModel).where(UserModel.username == username))
        return _user(row) if row is not None else None


def get_user_by_id(user_id: int) -> User | None:
    """The user with that id, or None."""
    with read_session() as s:
        row = s.get(UserModel, user_id)
        return _user(row) if row is not None else None


def get_credentials(username: str) -> tuple[User, str] | None:
    """The user and their stored password hash, for authentication only."""
    with read_session() as s:
        row = s.scalar(select(UserModel).where(UserModel.username == username))
        return (_user(row), row.password_hash) if row is not None else None


def update_user(username: str, **fields: Any) -> User:
    """Change columns of one user (role, password_hash, disabled, display_name); return the new state."""
    allowed = {"role", "password_hash", "disabled", "display_name"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"cannot change {', '.join(sorted(unknown))} of a user")
    with write_session() as s:
        row = s.scalar(select(UserModel).where(UserModel.username == username))
        if row is None:
            raise UserNotFound(f"no user {username!r}")
        was_admin = row.role == "admin" and not row.disabled
        for key, value in fields.items():
            setattr(row, key, value)
        s.flush()
        # Checked inside the same write transaction, so two admins demoting each other at once
        # cannot leave the installation with nobody able to manage users.
        if was_admin and not s.scalar(select(func.count()).select_from(UserModel)
                                      .where(UserModel.role == "admin", UserModel.disabled.is_(False))):
            raise ValueError(f"{username!r} is the last enabled admin; make someone else admin first")
        return _user(row)


def list_users() -> list[User]:
    """All users, by name."""
    with read_session() as s:
        return [_user(row) for row in s.scalars(select(UserModel).order_by(UserModel.username))]


def count_users(role: str | None = None, enabled_only: bool = False) -> int:
    """How many users exist (optionally of one role, optionally only enabled ones)."""
    query = select(func.count()).select_from(UserModel)
    if role is not None:
        query = query.where(UserModel.role == role)
    if enabled_only:
        query = query.where(UserModel.disabled.is_(False))
    with read_session() as s:
        return int(s.scalar(query) or 0)
