"""Users, password hashing, roles and permissions, OIDC first login, and `user add` from the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from db import datasets
from db import decisions as decisions_db
from db.engine import dispose_all
from wbc_core import auth, review_model
from wbc_core.auth import PermissionDenied

ROOT = Path(__file__).resolve().parent.parent


def test_password_is_stored_as_salted_pbkdf2_and_verified(wbc_home):
    auth.create_user("ann", "correct horse", "reviewer")
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
    auth.create_user("ann", "correct horse", "reviewer")
    auth.create_user("dis", "correct horse", "reviewer")
    auth.disable_user("dis")
    auth.ensure_oidc_user("oidc@lab.org", "Oidc Person")
    assert auth.authenticate("ann", "wrong horse") is None
    assert auth.authenticate("nobody", "correct horse") is None
    assert auth.authenticate("dis", "correct horse") is None
    assert auth.authenticate("oidc@lab.org", "") is None
    assert auth.authenticate("ann", "") is None


def test_old_hashes_are_upgraded_at_login(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    auth.create_user("ann", "correct horse", "reviewer")
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
        auth.create_user(name, password, "viewer")
    assert not auth.has_users()


def test_user_admin_functions(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)  # many hashes here; the count is tested above
    assert not auth.has_users()
    auth.create_user("ann", "password1", "admin", display_name="Ann A.")
    auth.create_user("bob.b@lab-1.org", "password2", "viewer")
    assert auth.has_users()
    with pytest.raises(auth.UserExists, match="already exists"):
        auth.create_user("ann", "password3", "viewer")
    with pytest.raises(ValueError, match="role must be one of"):
        auth.create_user("carl", "password3", "superuser")
    assert auth.set_role("bob.b@lab-1.org", "reviewer").role == "reviewer"
    auth.set_password("bob.b@lab-1.org", "newpassword")
    assert auth.authenticate("bob.b@lab-1.org", "password2") is None
    assert auth.authenticate("bob.b@lab-1.org", "newpassword").role == "reviewer"
    assert [(u.username, u.role, u.label) for u in auth.list_users()] == [
        ("ann", "admin", "Ann A."), ("bob.b@lab-1.org", "reviewer", "bob.b@lab-1.org")]
    with pytest.raises(auth.UserNotFound):
        auth.set_role("nobody", "viewer")
    # The last enabled admin can be neither demoted nor disabled; with a second admin both work.
    with pytest.raises(ValueError, match="last enabled admin"):
        auth.set_role("ann", "viewer")
    with pytest.raises(ValueError, match="last enabled admin"):
        auth.disable_user("ann")
    auth.set_role("bob.b@lab-1.org", "admin")
    assert auth.disable_user("ann").disabled
    assert auth.disable_user("ann", disabled=False).disabled is False


def test_oidc_first_user_is_admin_then_viewers(wbc_home):
    first = auth.ensure_oidc_user("Ann@Lab.org", "Ann")
    assert (first.username, first.role, first.source, first.display_name) == ("ann@lab.org", "admin", "oidc", "Ann")
    second = auth.ensure_oidc_user("bob@lab.org", "Bob")
    assert second.role == "viewer"
    assert auth.ensure_oidc_user("ann@lab.org", "Ann again") == first  # second login: the same user
    auth.set_role("ann@lab.org", "admin")
    auth.set_role("bob@lab.org", "admin")
    auth.disable_user("bob@lab.org")
    with pytest.raises(PermissionDenied, match="disabled"):
        auth.ensure_oidc_user("bob@lab.org", "Bob")


def test_oidc_after_local_users_creates_a_viewer(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    auth.create_user("root", "password1", "admin")
    assert auth.ensure_oidc_user("eve@lab.org").role == "viewer"


def test_permissions_table_and_plain_denials(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    admin = auth.create_user("ann", "password1", "admin")
    rev = auth.create_user("rita", "password1", "reviewer")
    bob = auth.create_user("bob", "password1", "viewer")
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
    auth.set_role("rita", "viewer")
    with pytest.raises(PermissionDenied, match="viewer 'rita' may not review"):
        auth.authorize(rev, "review")
    auth.disable_user("bob")
    with pytest.raises(PermissionDenied, match="disabled"):
        auth.authorize(bob, "view")


def test_decide_checks_the_acting_user(wbc_home, monkeypatch):
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, [])
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a", split=None, sha256=f"s{i}",
                                                path=f"q{i}", width=8, height=8) for i in range(3)])
    rita = auth.create_user("rita", "password1", "reviewer")
    bob = auth.create_user("bob", "password1", "viewer")
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
    # Trusted headless use (no user) keeps working with the old positional call.
    review_model.decide(ids[2:], "cli", "reject")
    assert {d["reviewer"] for d in decisions_db.current_decisions(dataset_id)} == {"rita", "cli"}


def _cli(home, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WBC_HOME": str(home)}
    env.pop("WBC_DB_URL", None)
    return subprocess.run([sys.executable, "-m", "wbc_core", "--json", *args], input=stdin, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_user_add_reads_the_password_from_stdin(tmp_path, monkeypatch):
    home = tmp_path / "home"
    out = _cli(home, "user", "add", "ann", "--role", "admin", "--password-stdin", stdin="s3cret-pass\n")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"username": "ann", "role": "admin", "display_name": None, "source": "local",
                                      "disabled": False}
    listed = _cli(home, "user", "list")
    assert [u["username"] for u in json.loads(listed.stdout)["users"]] == ["ann"]
    short = _cli(home, "user", "add", "bob", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    # A password on the command line (visible in ps and shell history) is not accepted.
    argv = _cli(home, "user", "add", "bob", "--role", "viewer", "--password", "hunter2hunter2")
    assert argv.returncode == 2 and "bob" not in _cli(home, "user", "list").stdout
    monkeypatch.setenv("WBC_HOME", str(home))
    dispose_all()
    try:
        assert auth.authenticate("ann", "s3cret-pass").role == "admin"
    finally:
        dispose_all()
