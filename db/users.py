"""Queries on users. Hashing, validation and permissions live in wbc_core.auth; this module only stores."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from db import validate
from db.engine import read_session, serialise, write_session
from db.models import SignInFailure, SignInSession
from db.models import User as UserModel

# Every write that checks the users table before changing it (the first user becomes admin, the last enabled
# admin stays) waits for the others on this name (PostgreSQL; SQLite's BEGIN IMMEDIATE already does).
_USERS_LOCK = "users"


class UserExists(ValueError):
    """A user with that name already exists."""


class UserNotFound(LookupError):
    """No user with that name."""


class AlreadySetUp(UserExists):
    """The first admin was to be created, but someone created an account meanwhile."""


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
    _check(username, display_name)
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


def _check(username: str, display_name: str | None) -> None:
    validate.text(username, "the user name", validate.USERNAME_MAX, required=True)
    validate.text(display_name, "the display name", validate.DISPLAY_NAME_MAX)


def insert_first_admin_or(username: str, role: str | None, display_name: str | None, source: str,
                          password_hash: str = "") -> User:
    """Return the user with that name, or create it: as admin if nobody exists yet, else with role.

    role None is the first-run form: create the admin only into an empty table, else raise AlreadySetUp.
    One write transaction that waits for every other users write (SQLite's lock taken at BEGIN, an advisory
    lock on PostgreSQL), so two simultaneous first logins cannot both see an empty table and both become admin.
    """
    _check(username, display_name)
    with write_session() as s:
        serialise(s, _USERS_LOCK)
        row = s.scalar(select(UserModel).where(UserModel.username == username))
        if row is not None and role is not None:
            return _user(row)
        first = not s.scalar(select(func.count()).select_from(UserModel))
        if not first and role is None:
            raise AlreadySetUp("an account was created meanwhile; sign in with it instead")
        row = UserModel(username=username, password_hash=password_hash, role="admin" if first else role,
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
    if "display_name" in fields:
        validate.text(fields["display_name"], "the display name", validate.DISPLAY_NAME_MAX)
    with write_session() as s:
        serialise(s, _USERS_LOCK)
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


# -- failed sign-ins (back-off) ------------------------------------------------------------------------------

def sign_in_locked_until(keys: Iterable[str], now: datetime) -> datetime | None:
    """The latest lock still in force on any of the keys, or None."""
    with read_session() as s:
        return s.scalar(select(func.max(SignInFailure.locked_until))
                        .where(SignInFailure.key.in_(list(keys)), SignInFailure.locked_until > now))


def record_sign_in_failure(keys: Iterable[str], now: datetime, lock_seconds: Callable[[str, int], float],
                           forget_before: datetime) -> datetime | None:
    """Count one failed sign-in on each key and return the latest lock then in force (None: none).

    A key whose last failure is older than forget_before starts again at zero; lock_seconds(key, failures) says
    for how long the key is locked after that many failures in a row (0: not locked).
    """
    keys = sorted(set(keys))  # one lock order for every caller, so two failures cannot deadlock
    with write_session() as s:
        dialect = s.get_bind().dialect.name
        make = postgresql.insert if dialect == "postgresql" else sqlite.insert
        s.execute(make(SignInFailure).values([{"key": k, "failures": 0, "last_failure_at": now} for k in keys])
                  .on_conflict_do_nothing(index_elements=["key"]))
        latest = None
        for row in s.scalars(select(SignInFailure).where(SignInFailure.key.in_(keys))
                             .order_by(SignInFailure.key).with_for_update()):
            if row.last_failure_at < forget_before:
                row.failures, row.locked_until = 0, None
            row.failures += 1
            row.last_failure_at = now
            seconds = lock_seconds(row.key, row.failures)
            if seconds > 0:
                row.locked_until = now + timedelta(seconds=seconds)
            if row.locked_until is not None and row.locked_until > now:
                latest = row.locked_until if latest is None else max(latest, row.locked_until)
        return latest


def sign_in_failures(key: str) -> tuple[int, datetime | None]:
    """Failures in a row on a key and its lock (0, None when there are none)."""
    with read_session() as s:
        row = s.get(SignInFailure, key)
        return (row.failures, row.locked_until) if row is not None else (0, None)


def clear_sign_in_failures(keys: Iterable[str]) -> int:
    """Forget the failures of the keys (a successful sign-in, an admin's unlock); how many keys had any."""
    with write_session() as s:
        return int(s.execute(delete(SignInFailure).where(SignInFailure.key.in_(list(keys)))).rowcount or 0)


# -- kept sign-ins (the rows behind signed session tokens) ---------------------------------------------------

@dataclass(frozen=True)
class SessionRecord:
    """A kept sign-in as stored, with its user and that user's password hash (to check the token's fingerprint)."""

    id: int
    user: User
    password_hash: str
    expires_at: datetime
    revoked_at: datetime | None


def insert_session(user_id: int, now: datetime, expires_at: datetime) -> int:
    """Store a new kept sign-in and return its id; sign-ins that ended long ago are removed on the way."""
    with write_session() as s:
        s.execute(delete(SignInSession).where(SignInSession.expires_at < now - timedelta(days=1)))
        row = SignInSession(user_id=user_id, created_at=now, expires_at=expires_at)
        s.add(row)
        s.flush()
        return int(row.id)


def get_session(session_id: int) -> SessionRecord | None:
    """The kept sign-in with that id and its user (one read), or None."""
    with read_session() as s:
        found = s.execute(select(SignInSession, UserModel).join(UserModel, UserModel.id == SignInSession.user_id)
                          .where(SignInSession.id == session_id)).first()
        if found is None:
            return None
        row, user = found
        return SessionRecord(row.id, _user(user), user.password_hash, row.expires_at, row.revoked_at)


def revoke_session(session_id: int, now: datetime) -> bool:
    """End one kept sign-in (sign-out); False when it was unknown or had ended already."""
    with write_session() as s:
        return bool(s.execute(update(SignInSession).where(SignInSession.id == session_id,
                                                          SignInSession.revoked_at.is_(None))
                              .values(revoked_at=now)).rowcount)


def revoke_user_sessions(user_id: int, now: datetime) -> int:
    """End every kept sign-in of one user (account disabled, sign-out everywhere); how many were live."""
    with write_session() as s:
        return int(s.execute(update(SignInSession).where(SignInSession.user_id == user_id,
                                                         SignInSession.revoked_at.is_(None),
                                                         SignInSession.expires_at > now)
                             .values(revoked_at=now)).rowcount or 0)
