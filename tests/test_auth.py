"""Users, password hashing, roles and permissions, OIDC first login, sign-in back-off, races between admins, and
`user add` / `user unlock` from the CLI; on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from support import account, context_on

from db import datasets
from db import decisions as decisions_db
from db.engine import read_session
from wbc_core import auth, review_model
from wbc_core.auth import PermissionDenied

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.databases("sqlite", "postgresql")


def test_password_is_stored_as_salted_pbkdf2_and_verified(wbc_home):
    auth.create_user("ann", "correct horse", "reviewer", user=account())
    from db.users import get_credentials

    user, stored = get_credentials("ann")
    scheme, iterations, salt_b64, hash_b64 = stored.split("$")
    assert scheme == "pbkdf2_sha256" and int(iterations) >= 200_000
    assert "correct horse" not in stored
    expected = hashlib.pbkdf2_hmac("sha256", b"correct horse", base64.b64decode(salt_b64), int(iterations))
    assert base64.b64decode(hash_b64) == expected
    # A random salt: the same password hashes differently every time.
    assert auth.hash_password("correct horse", 1000) != auth.hash_password("correct horse", 1000)
    assert auth.authenticate("ann", "correct horse") == user


def test_every_failed_login_looks_the_same(wbc_home):
    auth.create_user("ann", "correct horse", "reviewer", user=account())
    auth.create_user("dis", "correct horse", "reviewer", user=account())
    auth.disable_user("dis", user=account())
    auth.ensure_oidc_user("oidc@lab.org", "Oidc Person")
    assert auth.authenticate("ann", "wrong horse") is None
    assert auth.authenticate("nobody", "correct horse") is None
    assert auth.authenticate("dis", "correct horse") is None
    assert auth.authenticate("oidc@lab.org", "") is None
    assert auth.authenticate("ann", "") is None


def test_old_hashes_are_upgraded_at_login(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    auth.create_user("ann", "correct horse", "reviewer", user=account())
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 2_000)
    assert auth.authenticate("ann", "correct horse") is not None
    from db.users import get_credentials

    assert get_credentials("ann")[1].split("$")[1] == "2000"


@pytest.mark.parametrize(("name", "password", "message"), [
    ("", "long enough", "not allowed"),
    ("a" * 65, "long enough", "not allowed"),
    ("ann smith", "long enough", "not allowed"),
    ("ann/../x", "long enough", "not allowed"),
    ("ann", "short", "at least 8 characters"),
])
def test_bad_names_and_passwords_are_refused_plainly(wbc_home, name, password, message):
    with pytest.raises(ValueError, match=message):
        auth.create_user(name, password, "viewer", user=account())
    assert [u.username for u in auth.list_users()] == ["admin"]  # only the acting admin


def test_user_admin_functions(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)  # many hashes here; the count is tested above
    assert not auth.has_users()
    ann = auth.create_first_admin("ann", "password1", display_name="Ann A.")
    bob = auth.create_user("bob.b@lab-1.org", "password2", "viewer", user=ann)
    assert auth.has_users()
    with pytest.raises(auth.UserExists, match="already exists"):
        auth.create_user("ann", "password3", "viewer", user=ann)
    with pytest.raises(ValueError, match="role must be one of"):
        auth.create_user("carl", "password3", "superuser", user=ann)
    with pytest.raises(PermissionDenied, match="viewer 'bob.b@lab-1.org' may not manage users"):
        auth.create_user("carl", "password3", "viewer", user=bob)
    assert auth.set_role("bob.b@lab-1.org", "reviewer", user=ann).role == "reviewer"
    auth.set_password("bob.b@lab-1.org", "newpassword", user=ann)
    assert auth.authenticate("bob.b@lab-1.org", "password2") is None
    assert auth.authenticate("bob.b@lab-1.org", "newpassword").role == "reviewer"
    assert [(u.username, u.role, u.label) for u in auth.list_users()] == [
        ("ann", "admin", "Ann A."), ("bob.b@lab-1.org", "reviewer", "bob.b@lab-1.org")]
    with pytest.raises(auth.UserNotFound):
        auth.set_role("nobody", "viewer", user=ann)
    # The last enabled admin can be neither demoted nor disabled; with a second admin both work.
    with pytest.raises(ValueError, match="last enabled admin"):
        auth.set_role("ann", "viewer", user=ann)
    with pytest.raises(ValueError, match="last enabled admin"):
        auth.disable_user("ann", user=ann)
    auth.set_role("bob.b@lab-1.org", "admin", user=ann)
    assert auth.disable_user("ann", user=bob).disabled
    assert auth.disable_user("ann", disabled=False, user=bob).disabled is False


def test_only_user_managers_change_accounts_but_everyone_sets_their_own_password(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    ann = auth.create_first_admin("ann", "password1")
    rita = auth.create_user("rita", "password1", "reviewer", user=ann)
    vic = auth.create_user("vic", "password1", "viewer", user=ann)
    for actor in (rita, vic):
        for change in (lambda a=actor: auth.set_role(a.username, "admin", user=a),
                       lambda a=actor: auth.set_password("ann", "taken over", user=a),
                       lambda a=actor: auth.disable_user("ann", user=a),
                       lambda a=actor: auth.unlock_user("ann", user=a),
                       lambda a=actor: auth.create_user("mallory", "password1", "admin", user=a)):
            with pytest.raises(PermissionDenied, match="may not manage users"):
                change()
        auth.set_password(actor.username, "my own new one", user=actor)
        assert auth.authenticate(actor.username, "my own new one") is not None
    assert [(u.username, u.role) for u in auth.list_users()] == [("ann", "admin"), ("rita", "reviewer"),
                                                                  ("vic", "viewer")]
    assert auth.authenticate("ann", "password1") is not None
    with pytest.raises(PermissionDenied, match="sign in first"):
        auth.create_user("mallory", "password1", "admin", user=None)


def test_oidc_first_user_is_admin_then_viewers(wbc_home):
    first = auth.ensure_oidc_user("Ann@Lab.org", "Ann")
    assert (first.username, first.role, first.source, first.display_name) == ("ann@lab.org", "admin", "oidc", "Ann")
    second = auth.ensure_oidc_user("bob@lab.org", "Bob")
    assert second.role == "viewer"
    assert auth.ensure_oidc_user("ann@lab.org", "Ann again") == first  # second login: the same user
    auth.set_role("ann@lab.org", "admin", user=first)
    auth.set_role("bob@lab.org", "admin", user=first)
    auth.disable_user("bob@lab.org", user=first)
    with pytest.raises(PermissionDenied, match="disabled"):
        auth.ensure_oidc_user("bob@lab.org", "Bob")


def test_oidc_after_local_users_creates_a_viewer(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    auth.create_user("root", "password1", "admin", user=account())
    assert auth.ensure_oidc_user("eve@lab.org").role == "viewer"


def test_permissions_table_and_plain_denials(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    admin = auth.create_user("ann", "password1", "admin", user=account())
    rev = auth.create_user("rita", "password1", "reviewer", user=account())
    bob = auth.create_user("bob", "password1", "viewer", user=account())
    assert auth.PERMISSIONS["review"] == {"admin", "reviewer"}
    assert auth.PERMISSIONS["export"] == {"admin", "reviewer"}
    for perm in ("adjudicate", "import", "train", "manage_users"):
        assert auth.PERMISSIONS[perm] == {"admin"}
    assert auth.PERMISSIONS["view"] >= {"admin", "reviewer", "viewer"}
    with pytest.raises(PermissionDenied) as denied:
        auth.authorize(bob, "review")
    assert str(denied.value) == "viewer 'bob' may not review; ask an admin for the reviewer role"
    with pytest.raises(PermissionDenied, match="reviewer 'rita' may not adjudicate; ask an admin for the admin role"):
        auth.authorize(rev, "adjudicate")
    assert auth.authorize(admin, "manage_users") == admin
    assert auth.can(rev, "export") and not auth.can(bob, "export") and not auth.can(None, "view")
    with pytest.raises(ValueError, match="unknown permission"):
        auth.authorize(admin, "fly")
    # authorize re-reads the user: a role taken away (or a disabled account) applies to a stale object at once.
    auth.set_role("rita", "viewer", user=account())
    with pytest.raises(PermissionDenied, match="viewer 'rita' may not review"):
        auth.authorize(rev, "review")
    auth.disable_user("bob", user=account())
    with pytest.raises(PermissionDenied, match="disabled"):
        auth.authorize(bob, "view")


def test_decide_checks_the_acting_user(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, [])
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a", split=None, sha256=f"s{i}",
                                                path=f"q{i}", width=8, height=8) for i in range(3)])
    rita = auth.create_user("rita", "password1", "reviewer", user=account())
    bob = auth.create_user("bob", "password1", "viewer", user=account())
    with pytest.raises(PermissionDenied, match="viewer 'bob' may not review"):
        review_model.decide(ids[:1], "bob", "accept", user=bob)
    with pytest.raises(PermissionDenied, match="your own name"):
        review_model.decide(ids[:1], "ann", "accept", user=rita)
    assert len(review_model.decide(ids[:1], "rita", "accept", user=rita)) == 1
    with pytest.raises(PermissionDenied):
        review_model.undo_last(dataset_id, "bob", user=bob)
    with pytest.raises(PermissionDenied, match="may not adjudicate"):
        review_model.adjudicate(ids[1:2], rita, "accept")
    with pytest.raises(PermissionDenied, match="configure review"):
        review_model.set_review_settings(dataset_id, review_model.ReviewSettings(), rita)
    # There is no trusted caller without a user any more: nobody's decisions are refused, never recorded.
    with pytest.raises(PermissionDenied, match="sign in first"):
        review_model.decide(ids[2:], "cli", "reject", user=None)
    with pytest.raises(PermissionDenied, match="sign in first"):
        review_model.set_review_settings(dataset_id, review_model.ReviewSettings(), None)
    assert {d["reviewer"] for d in decisions_db.current_decisions(dataset_id)} == {"rita"}


def _cli(home, *args: str, stdin: str | None = None, db_url: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WBC_HOME": str(home)}
    env.pop("WBC_DB_URL", None)
    if db_url:
        env["WBC_DB_URL"] = db_url
    return subprocess.run([sys.executable, "-m", "wbc_core", "--json", *args], input=stdin, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_user_add_reads_the_password_from_stdin(tmp_path, db_url):
    home = tmp_path / "home"
    out = _cli(home, "user", "add", "ann", "--role", "admin", "--password-stdin", stdin="s3cret-pass\n", db_url=db_url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"username": "ann", "role": "admin", "display_name": None, "source": "local",
                                      "disabled": False}
    listed = _cli(home, "user", "list", db_url=db_url)
    # The CLI acted as the machine's owner: its default account, created as admin (without a password) on first use.
    assert [(u["username"], u["role"]) for u in json.loads(listed.stdout)["users"]] == [("ann", "admin"),
                                                                                      ("local", "admin")]
    short = _cli(home, "user", "add", "bob", "--role", "viewer", "--password-stdin", stdin="short\n", db_url=db_url)
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    # A password on the command line (visible in ps and shell history) is not accepted.
    argv = _cli(home, "user", "add", "bob", "--role", "viewer", "--password", "hunter2hunter2", db_url=db_url)
    assert argv.returncode == 2 and "bob" not in _cli(home, "user", "list", db_url=db_url).stdout
    with context_on(home, db_url):
        assert auth.authenticate("ann", "s3cret-pass").role == "admin"
        for _ in range(auth.ACCOUNT_FREE_FAILURES):
            assert auth.authenticate("ann", "wrong-pass") is None
        with pytest.raises(auth.SignInLocked):
            auth.authenticate("ann", "s3cret-pass")
    unlocked = _cli(home, "user", "unlock", "ann", db_url=db_url)
    assert unlocked.returncode == 0, unlocked.stderr
    assert json.loads(unlocked.stdout)["username"] == "ann"
    unknown = _cli(home, "user", "unlock", "nobody", db_url=db_url)
    assert unknown.returncode != 0 and "no user 'nobody'" in unknown.stderr + unknown.stdout
    with context_on(home, db_url):
        assert auth.authenticate("ann", "s3cret-pass").role == "admin"


# -- sign-in back-off -------------------------------------------------------------------------------------------

@pytest.fixture()
def clock(monkeypatch) -> list[datetime]:
    """The sign-in clock, moved by hand: clock[0] is now (no sleeping, no timing in the assertions)."""
    now = [datetime(2026, 1, 5, 9, 0, 0)]
    monkeypatch.setattr(auth, "_now", lambda: now[0])
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    monkeypatch.setattr(auth, "_DUMMY_HASH", auth.hash_password("unused", 1_000))
    return now


def _attempt(username: str, password: str, client: str | None = None) -> str:
    try:
        return "ok" if auth.authenticate(username, password, client=client) is not None else "wrong"
    except auth.SignInLocked:
        return "locked"


def test_eighty_wrong_passwords_lock_the_account_until_the_back_off_ends(wbc_home, clock):
    """80 wrong passwords in a row, then the right one, signed in at once before."""
    auth.create_user("ann", "correct horse", "reviewer", user=account())
    outcomes = [_attempt("ann", "wrong horse") for _ in range(80)]
    assert outcomes == ["wrong"] * auth.ACCOUNT_FREE_FAILURES + ["locked"] * (80 - auth.ACCOUNT_FREE_FAILURES)
    with pytest.raises(auth.SignInLocked) as locked:
        auth.authenticate("ann", "correct horse")
    assert str(locked.value) == ("too many failed sign-ins for this account or from this browser: try again in "
                                 "30 s, or ask an admin to unlock the account")
    assert auth.locked_until("ann") == clock[0] + timedelta(seconds=auth.FIRST_LOCK_S)
    # While locked nothing is counted; after it, every further failure doubles the lock, up to the cap.
    waits = []
    for _ in range(8):
        clock[0] = auth.locked_until("ann") + timedelta(seconds=1)
        assert _attempt("ann", "wrong horse") == "wrong"
        waits.append((auth.locked_until("ann") - clock[0]).total_seconds())
    assert waits == [60, 120, 240, 480, 900, 900, 900, 900]
    clock[0] += timedelta(seconds=901)
    assert auth.authenticate("ann", "correct horse").username == "ann"
    # A success clears the count: the next mistakes start with free tries again.
    assert _attempt("ann", "wrong horse") == "wrong" and auth.locked_until("ann") is None


def test_unknown_names_back_off_alike_and_old_failures_are_forgotten(wbc_home, clock):
    for name in ("ann", "nobody"):  # the answer never tells whether a name exists
        if name == "ann":
            auth.create_user("ann", "correct horse", "reviewer", user=account())
        for _ in range(auth.ACCOUNT_FREE_FAILURES):
            assert _attempt(name, "wrong horse") == "wrong"
        assert _attempt(name, "correct horse") == "locked"
    auth.create_user("bob", "correct horse", "reviewer", user=account())
    for _ in range(auth.ACCOUNT_FREE_FAILURES - 1):
        assert _attempt("bob", "wrong horse") == "wrong"
    clock[0] += auth.FORGET_FAILURES_AFTER + timedelta(minutes=1)  # a day later, the count starts again
    for _ in range(auth.ACCOUNT_FREE_FAILURES - 1):
        assert _attempt("bob", "wrong horse") == "wrong"
    assert _attempt("bob", "correct horse") == "ok"


def test_one_client_trying_many_accounts_is_locked_out_alone(wbc_home, clock):
    auth.create_user("ann", "correct horse", "reviewer", user=account())
    for i in range(auth.CLIENT_FREE_FAILURES):  # one guess per name, never enough to lock any account
        assert _attempt(f"user{i}", "guess", client="tab-1") == "wrong"
    assert _attempt("ann", "correct horse", client="tab-1") == "locked"
    assert _attempt("ann", "correct horse", client="tab-2") == "ok"
    assert _attempt("ann", "correct horse") == "ok"


def test_an_admin_unlocks_an_account_at_once(wbc_home, clock):
    auth.create_user("ann", "correct horse", "reviewer", user=account())
    for _ in range(auth.ACCOUNT_FREE_FAILURES):
        _attempt("ann", "wrong horse")
    assert auth.locked_until("ann") is not None
    assert auth.unlock_user("ann", user=account()).username == "ann"
    assert auth.locked_until("ann") is None
    assert _attempt("ann", "correct horse") == "ok"
    with pytest.raises(auth.UserNotFound, match="no user 'nobody'"):
        auth.unlock_user("nobody", user=account())


# -- races between concurrent callers -----------------------------------------------------------------------------

def _at_once(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls in threads released together; each one's return value or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        with read_session() as s:  # every thread connected first, so none is still logging in when they start
            s.execute(text("SELECT 1"))
            barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def _enabled_admins() -> list[str]:
    return [u.username for u in auth.list_users() if u.role == "admin" and not u.disabled]


def test_two_admins_removing_each_other_at_once_leave_one(wbc_home, monkeypatch):
    """5 of 10 such trials on PostgreSQL ended with no enabled admin (the guard relied on BEGIN IMMEDIATE)."""
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    survivor = auth.create_first_admin("admin0", "password1").username
    for trial in range(1, 7):
        other = auth.create_user(f"admin{trial}", "password1", "admin", user=auth.get_user(survivor)).username
        # Each admin removes the other. The one who comes second is refused: by the last-admin guard, or (when
        # the first change is already done) because they are no longer an enabled admin at all.
        by_other, by_survivor = auth.get_user(other), auth.get_user(survivor)
        remove = [lambda n=survivor, a=by_other: auth.set_role(n, "viewer", user=a),
                  lambda n=other, a=by_survivor: auth.set_role(n, "viewer", user=a)]
        if trial % 2:  # disabling is guarded the same way
            remove[0] = lambda n=survivor, a=by_other: auth.disable_user(n, user=a)
        results = _at_once(remove)
        refused = [r for r in results if isinstance(r, (ValueError, PermissionDenied))]
        assert len(refused) == 1 and any(words in str(refused[0]) for words in (
            "last enabled admin", "may not manage users", "is disabled")), results
        assert len(_enabled_admins()) == 1, results
        survivor = _enabled_admins()[0]


def test_first_admin_forms_submitted_at_once_make_one_admin(wbc_home, monkeypatch):
    """Two first-run forms at once created two admins in 4 of 4 trials."""
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    results = _at_once([lambda i=i: auth.create_first_admin(f"boss{i}", "password1") for i in range(4)])
    made = [r for r in results if isinstance(r, auth.User)]
    assert len(made) == 1, results
    assert all(isinstance(r, auth.AlreadySetUp) for r in results if r is not made[0]), results
    late = next(r for r in results if r is not made[0])
    assert str(late) == "an account was created meanwhile; sign in with it instead"
    assert [(u.username, u.role) for u in auth.list_users()] == [(made[0].username, "admin")]
    assert auth.authenticate(made[0].username, "password1") == made[0]
    with pytest.raises(auth.AlreadySetUp):  # and never again once set up
        auth.create_first_admin("late", "password1")


def test_first_oidc_logins_at_once_make_one_admin(wbc_home):
    results = _at_once([lambda i=i: auth.ensure_oidc_user(f"p{i}@lab.org") for i in range(4)])
    assert all(isinstance(r, auth.User) for r in results), results
    assert sorted(r.role for r in results) == ["admin", "viewer", "viewer", "viewer"]


def test_failed_sign_ins_at_once_are_all_counted(wbc_home, clock):
    auth.create_user("ann", "correct horse", "reviewer", user=account())
    outcomes = _at_once([lambda: _attempt("ann", "wrong horse", client="tab-1") for _ in range(8)])
    from db.users import sign_in_failures

    wrong = outcomes.count("wrong")
    assert wrong >= auth.ACCOUNT_FREE_FAILURES and set(outcomes) <= {"wrong", "locked"}, outcomes
    assert sign_in_failures("user:ann")[0] == wrong and sign_in_failures("client:tab-1")[0] == wrong
    assert _attempt("ann", "correct horse") == "locked"
