"""Users, passwords and permissions. Never imports streamlit: the UI calls these after its own login form.

Passwords: PBKDF2-HMAC-SHA256 with a random 16-byte salt, stored as
"pbkdf2_sha256$<iterations>$<salt_b64>$<hash_b64>" and compared in constant time.

OIDC: the first OIDC login of an installation with no users at all creates an admin (someone must be
able to hand out roles); every later first login creates a viewer, whom an admin then promotes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from db import users as users_db
from db.models import utcnow
from db.users import AlreadySetUp, User, UserExists, UserNotFound
from db.vocabulary import ROLE_ORDER, ROLES

__all__ = ["PERMISSIONS", "AlreadySetUp", "PermissionDenied", "SignInLocked", "User", "UserExists", "UserNotFound",
           "authenticate", "authorize", "can", "create_first_admin", "create_user", "disable_user",
           "ensure_oidc_user", "get_user", "has_users", "issue_session", "list_users", "locked_until",
           "revoke_session", "revoke_sessions", "session_user", "set_password", "set_role", "unlock_user"]

# OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256 (~0.2 s here); the count is stored with each hash,
# so raising it later upgrades old hashes at their next successful login.
PBKDF2_ITERATIONS = 600_000
MIN_PASSWORD_LENGTH = 8
USERNAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")

PERMISSIONS: dict[str, frozenset[str]] = {
    "view": frozenset({"admin", "reviewer", "viewer"}),
    "review": frozenset({"admin", "reviewer"}),
    "adjudicate": frozenset({"admin"}),
    "import": frozenset({"admin"}),
    "train": frozenset({"admin"}),
    "manage_users": frozenset({"admin"}),
    "export": frozenset({"admin", "reviewer"}),
    # Consensus rule, quotas and the blinded realism test decide what enters training: admins only.
    "configure_review": frozenset({"admin"}),
}

# Verified against when the user is unknown, disabled or OIDC-only, so every failed login costs the
# same time and the answer does not reveal which names exist.
_DUMMY_HASH = "pbkdf2_sha256${}${}${}".format(PBKDF2_ITERATIONS, base64.b64encode(b"\0" * 16).decode(),
                                              base64.b64encode(b"\0" * 32).decode())


# Back-off after failed sign-ins, counted per account (the name typed, whether it exists or not, so the answer
# reveals nothing) and per client (a browser session, an address): a few free tries, then a lock that doubles
# with every further failure up to a cap. A success clears the account's count; an admin can clear it too.
ACCOUNT_FREE_FAILURES = 5
CLIENT_FREE_FAILURES = 20  # a shared lab computer signs several people in
FIRST_LOCK_S = 30
MAX_LOCK_S = 15 * 60
FORGET_FAILURES_AFTER = timedelta(hours=24)
_now = utcnow  # the clock (naive UTC); tests replace it instead of sleeping


class PermissionDenied(PermissionError):
    """The acting user's role does not allow the action (message says which role would)."""


class SignInLocked(PermissionError):
    """Too many failed sign-ins for the account or from the client: no password is checked until `until`."""

    def __init__(self, message: str, until: datetime) -> None:
        super().__init__(message)
        self.until = until


def validate_username(username: str) -> str:
    """Return the trimmed name, or raise ValueError saying what is allowed."""
    name = (username or "").strip()
    if not USERNAME_RE.fullmatch(name):
        raise ValueError(f"user name {name!r} is not allowed: use 1-64 letters, digits, '.', '_', '@' or '-'")
    return name


def validate_password(password: str) -> None:
    """Raise ValueError unless the password is long enough."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def _validate_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def hash_password(password: str, iterations: int | None = None) -> str:
    """A salted PBKDF2-SHA256 hash in the stored string format (default: PBKDF2_ITERATIONS rounds)."""
    iterations = iterations or PBKDF2_ITERATIONS
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True if the password matches the stored hash (constant-time comparison)."""
    try:
        scheme, iterations, salt_b64, hash_b64 = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        expected = base64.b64decode(hash_b64)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), base64.b64decode(salt_b64), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


def create_user(username: str, password: str, role: str, display_name: str | None = None, *, user: User) -> User:
    """Create a local user with a hashed password; raise ValueError (UserExists) with a plain message.

    user is the acting account: it needs the manage_users permission (PermissionDenied otherwise)."""
    authorize(user, "manage_users")
    name = validate_username(username)
    validate_password(password)
    return users_db.insert_user(name, hash_password(password), _validate_role(role), display_name or None, "local")


def create_first_admin(username: str, password: str, display_name: str | None = None) -> User:
    """The first-run form: create the admin only while no account exists at all, atomically (AlreadySetUp if
    someone else was first), so two forms submitted at once cannot make two admins."""
    name = validate_username(username)
    validate_password(password)
    return users_db.insert_first_admin_or(name, None, display_name or None, "local",
                                          password_hash=hash_password(password))


def _account_key(username: str) -> str:
    return "user:" + username[:150]


def _throttle_keys(username: str, client: str | None) -> list[str]:
    keys = [_account_key(username)]
    if client:
        keys.append("client:" + str(client)[:150])
    return keys


def _lock_seconds(key: str, failures: int) -> float:
    free = ACCOUNT_FREE_FAILURES if key.startswith("user:") else CLIENT_FREE_FAILURES
    return 0.0 if failures < free else float(min(MAX_LOCK_S, FIRST_LOCK_S * 2 ** min(failures - free, 20)))


def _wait_words(seconds: float) -> str:
    seconds = max(1, int(seconds + 0.999))
    return f"{seconds} s" if seconds < 90 else f"{(seconds + 59) // 60} min"


def authenticate(username: str, password: str, client: str | None = None) -> User | None:
    """The user if the name and password match an enabled local account, else None (same answer for every failure).

    client names where the attempt comes from (a browser session id, an address). After too many failures in a
    row for the name or from the client, SignInLocked says for how long no password is checked.
    """
    name = (username or "").strip()
    keys = _throttle_keys(name, client)
    now = _now()
    until = users_db.sign_in_locked_until(keys, now)
    if until is not None:
        raise SignInLocked(f"too many failed sign-ins for this account or from this browser: try again in "
                           f"{_wait_words((until - now).total_seconds())}, or ask an admin to unlock the account",
                           until)
    found = users_db.get_credentials(name) if len(name) <= 64 else None
    usable = found is not None and not found[0].disabled and found[1].startswith("pbkdf2_sha256$")
    stored = found[1] if usable else _DUMMY_HASH
    ok = verify_password(password or "", stored)
    if not (usable and ok):
        users_db.record_sign_in_failure(keys, now, _lock_seconds, now - FORGET_FAILURES_AFTER)
        return None
    users_db.clear_sign_in_failures([_account_key(name)])
    user = found[0]
    if int(stored.split("$")[1]) < PBKDF2_ITERATIONS:
        users_db.update_user(user.username, password_hash=hash_password(password))
    return user


def set_role(username: str, role: str, *, user: User) -> User:
    """Give a user another role (the last enabled admin cannot be demoted); the acting user manages users."""
    authorize(user, "manage_users")
    return users_db.update_user(username, role=_validate_role(role))


def set_password(username: str, password: str, *, user: User) -> User:
    """Replace a local user's password: one's own, or anyone's with the manage_users permission."""
    acting = authorize(user, "view")
    if acting.username != (username or "").strip():
        authorize(acting, "manage_users")
    validate_password(password)
    target = users_db.get_user(username)
    if target is None:
        raise UserNotFound(f"no user {username!r}")
    if target.source != "local":
        raise ValueError(f"{username!r} signs in through the identity provider and has no local password")
    return users_db.update_user(username, password_hash=hash_password(password))


def disable_user(username: str, disabled: bool = True, *, user: User) -> User:
    """Block (or with disabled=False, re-enable) a user; their decisions stay. The last admin cannot be disabled.

    The acting user needs the manage_users permission."""
    authorize(user, "manage_users")
    changed = users_db.update_user(username, disabled=disabled)
    if disabled:  # its kept sign-ins end now, and re-enabling the account does not bring them back
        users_db.revoke_user_sessions(changed.id, _now())
    return changed


def unlock_user(username: str, *, user: User) -> User:
    """Clear an account's failed sign-ins, so its next sign-in is checked at once (an admin's unlock)."""
    authorize(user, "manage_users")
    target = users_db.get_user((username or "").strip())
    if target is None:
        raise UserNotFound(f"no user {username!r}")
    users_db.clear_sign_in_failures([_account_key(target.username)])
    return target


def locked_until(username: str) -> datetime | None:
    """Until when the account's sign-in is locked after failed attempts (None: it is not)."""
    return users_db.sign_in_locked_until([_account_key(username)], _now())


def get_user(username: str) -> User | None:
    """The user with that name, or None."""
    return users_db.get_user(username)


def list_users() -> list[User]:
    """All users, by name."""
    return users_db.list_users()


def has_users() -> bool:
    """Whether any user exists (the UI offers first-admin setup when not)."""
    return users_db.count_users() > 0


def ensure_oidc_user(email: str, name: str | None = None) -> User:
    """The user for an OIDC identity, created on first login (admin if first user ever, else viewer).

    An existing local user with the same name is the same person (admins create local names on purpose).
    A disabled account raises PermissionDenied.
    """
    username = validate_username((email or "").strip().lower())
    user = users_db.insert_first_admin_or(username, "viewer", (name or "").strip() or None, "oidc")
    if user.disabled:
        raise PermissionDenied(f"the account {username!r} is disabled; ask an admin to enable it")
    return user


def can(user: User | None, permission: str) -> bool:
    """Whether the user's role allows the permission (no database access; for showing or hiding buttons)."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    return user is not None and not user.disabled and user.role in PERMISSIONS[permission]


def authorize(user: User, permission: str) -> User:
    """Re-read the user (role changes and disabling apply at once) and raise PermissionDenied unless allowed."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    current = users_db.get_user_by_id(user.id) if user is not None else None
    if current is None:
        raise PermissionDenied("sign in first")
    if current.disabled:
        raise PermissionDenied(f"the account {current.username!r} is disabled; ask an admin to enable it")
    allowed = PERMISSIONS[permission]
    if current.role not in allowed:
        needed = next(r for r in ROLE_ORDER if r in allowed)
        raise PermissionDenied(f"{current.role} '{current.username}' may not {permission.replace('_', ' ')}; "
                               f"ask an admin for the {needed} role")
    return current


def claim_local_account(username: str) -> User:
    """The CLI's default account: the existing user of that name, or, while the database has no account at all,
    that name created as admin without a password (the owner of the machine). AlreadySetUp when other accounts
    exist but this one does not: then an admin creates it, or the caller names another account. Atomic."""
    name = validate_username(username)
    found = users_db.get_user(name)
    if found is not None:
        return found
    try:
        return users_db.insert_first_admin_or(name, None, None, "local")
    except AlreadySetUp:
        raise AlreadySetUp(f"no account {name!r}, and other accounts exist: ask an admin to create it "
                           "(user add), or act as an existing account") from None


def ensure_local_admin(username: str) -> User:
    """The implicit admin of sign-in-off use (WBC_AUTH=off), created without a password on first use.

    Atomic: when several sessions arrive at once on an empty database, exactly one row is inserted.
    """
    name = validate_username(username)
    return users_db.insert_first_admin_or(name, "admin", None, "local")


# -- kept sign-ins: signed, expiring session tokens ------------------------------------------------------------
# A token is "v1.<session id>.<expiry, unix s>.<signature>": HMAC-SHA256, under a secret made once into WBC_HOME
# (mode 0600), over the session id, the user id, the expiry and a fingerprint of the user's password hash. It is
# accepted while its sign_in_sessions row is neither expired nor revoked (sign-out, the account disabled), the
# account is enabled and its password is unchanged (a new password changes the fingerprint).

SESSION_SECRET_FILE = "session_secret"
_TOKEN_VERSION = "v1"


def _session_secret() -> bytes:
    from wbc_core.context import current

    ctx = current()
    return ctx.caches.get("session_secret", lambda: load_or_create_secret(ctx.home / SESSION_SECRET_FILE))


def load_or_create_secret(path: Path) -> bytes:
    """The 32-byte signing secret in path, created there once (owner read/write only) when missing.

    Created under a temporary name and linked into place, so two processes starting at once agree on one secret
    and nobody reads a half-written file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
            with contextlib.suppress(FileExistsError):  # another process was first: use its secret
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    secret = bytes.fromhex(path.read_text().strip())
    if len(secret) < 32:
        raise ValueError(f"the sign-in secret {path} is damaged: delete it (everyone then signs in again)")
    return secret


def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode("utf-8")).hexdigest()[:32]


def _signature(secret: bytes, session_id: int, user_id: int, expires: int, password_hash: str) -> str:
    message = f"{_TOKEN_VERSION}|{session_id}|{user_id}|{expires}|{_fingerprint(password_hash)}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _unix(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds())


def issue_session(user: User, hours: float | None = None) -> str:
    """A signed token that keeps this user signed in for `hours` (default: the WBC_SESSION_HOURS setting).

    The caller has just checked the password (authenticate) or created the account; the browser keeps the token
    in a cookie and hands it back on a reload (session_user)."""
    from wbc_core.context import current
    from wbc_core.limits import bound

    hours = float(bound("session_hours").check(current().settings.session_hours if hours is None else hours))
    found = users_db.get_credentials(user.username)
    if found is None or found[0].disabled or found[0].id != user.id:
        raise PermissionDenied(f"the account {user.username!r} is disabled or gone; ask an admin")
    now = _now().replace(microsecond=0)
    expires_at = now + timedelta(hours=hours)
    session_id = users_db.insert_session(user.id, now, expires_at)
    expires = _unix(expires_at)
    signature = _signature(_session_secret(), session_id, user.id, expires, found[1])
    return f"{_TOKEN_VERSION}.{session_id}.{expires}.{signature}"


def _parse_token(token: str) -> tuple[int, int, str] | None:
    parts = (token or "").strip().split(".")
    if len(parts) != 4 or parts[0] != _TOKEN_VERSION or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    if len(parts[1]) > 18 or len(parts[2]) > 12 or len(parts[3]) > 64:
        return None
    return int(parts[1]), int(parts[2]), parts[3]


def session_user(token: str | None) -> User | None:
    """The user a session token keeps signed in, fresh from the database; None when the token is missing,
    malformed, tampered with, signed under another secret, expired, signed out, or its account is disabled, gone
    or has a new password since."""
    signed = _signed_session(token)
    if signed is None:
        return None
    record, expires = signed
    now = _now()
    if record.revoked_at is not None or expires != _unix(record.expires_at) or record.expires_at <= now:
        return None
    if record.user.disabled:
        return None
    return record.user


def revoke_session(token: str | None) -> bool:
    """Sign-out: end the kept sign-in this token names (only with a valid signature); True if one ended."""
    signed = _signed_session(token)
    if signed is None:
        return False
    return users_db.revoke_session(signed[0].id, _now())


def _signed_session(token: str | None) -> tuple[users_db.SessionRecord, int] | None:
    """The stored session a token names and the expiry it carries, when its signature checks out; else None."""
    parsed = _parse_token(token or "")
    if parsed is None:
        return None
    session_id, expires, signature = parsed
    record = users_db.get_session(session_id)
    if record is None:
        return None
    expected = _signature(_session_secret(), session_id, record.user.id, expires, record.password_hash)
    return (record, expires) if hmac.compare_digest(expected, signature) else None


def revoke_sessions(username: str, *, user: User) -> int:
    """End every kept sign-in of an account (sign out everywhere): one's own, or anyone's for an admin.

    Returns how many were live."""
    acting = authorize(user, "view")
    if acting.username != (username or "").strip():
        authorize(acting, "manage_users")
    target = users_db.get_user((username or "").strip())
    if target is None:
        raise UserNotFound(f"no user {username!r}")
    return users_db.revoke_user_sessions(target.id, _now())
