"""Roles are checked in the domain: every mutating domain function, called as viewer, reviewer and admin (and
with no user at all), allows or refuses (PermissionDenied) exactly as wbc_core.auth.PERMISSIONS says.

The pages and the CLI check too, but a page that is stale, a script or a future caller must not be able to act
beyond the role: these calls go straight to the domain. Jobs are queued with launch=False, so no worker starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import account, active_home, copy_home, module_home

from db import datasets as ds_db
from db import runs as runs_db
from db import users as users_db
from wbc_core import (
    auth,
    embedding_jobs,
    export,
    gan_runs,
    generation,
    import_jobs,
    importing,
    jobs,
    retrain,
    review_model,
)
from wbc_core.auth import PermissionDenied
from wbc_core.jobs import groups

ROLES = ("viewer", "reviewer", "admin")
ADMIN = frozenset({"admin"})
REVIEWERS = frozenset({"reviewer", "admin"})
EVERYONE = frozenset(ROLES)
GAN = {"steps": 4, "batch_size": 8, "g_width": 8, "d_width": 8, "checkpoint_every": 2, "device": "cpu",
       "num_threads": 1}
CLASSIFIER = {"model": "small_cnn", "epochs": 1, "batch_size": 8, "device": "cpu", "num_threads": 1}


@dataclass
class World:
    """What the actions work on, in the test's own copy of the built home."""

    root: Path
    dataset_id: int
    gan_run_id: int
    candidate_id: int
    classifier_run_id: int  # a succeeded classifier run (the embedding map needs one)
    folder: Path  # a class-subfolder image folder to import
    npz: Path  # a BloodMNIST-like .npz to import

    def admin_run(self) -> int:
        """An active (queued) job that the admin started."""
        return runs_db.create_run("score", self.dataset_id, {}, seed=0, started_by="admin")

    def own_run(self, user: auth.User | None) -> int:
        """An active job that `user` started themselves."""
        return runs_db.create_run("embedding", self.dataset_id, {}, seed=0,
                                  started_by=user.username if user else None)

    def admin_group(self) -> str:
        """A queued two-run group that the admin started."""
        return groups.start_seeds(self.dataset_id, "real", "0 1", CLASSIFIER, launch=False,
                                  user=account("admin")).group_name


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    data: dict[str, np.ndarray] = {}
    for split, n in {"train": 8, "val": 4, "test": 4}.items():
        data[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        data[f"{split}_labels"] = (np.arange(n) % 4).reshape(n, 1).astype(np.uint8)
    np.savez_compressed(path, **data)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A home with accounts of each role, dataset 'cells', a finished 4-step GAN run (trained in this process)
    with one candidate, and a succeeded classifier run record."""
    from wbc_core import worker
    from wbc_core.data.demo import write_demo_folder

    root = tmp_path_factory.mktemp("roles")
    home = root / "home"
    folder = write_demo_folder(root / "folder", per_class=14, size=32, seed=1)
    for note in folder.glob("*.txt"):
        note.unlink()
    with module_home(home):
        for role in ROLES:
            account(role)
        account("viewer", "other")
        admin = account("admin")
        dataset_id = importing.import_folder(folder, "cells", size=32, user=admin).dataset_id
        gan_run_id = gan_runs.start_gan_run("cells", GAN, launch=False, user=admin)
        assert worker.main(gan_run_id) == 0
        [candidate_id] = ds_db.add_images(dataset_id, [{
            "origin": "synthetic", "class_name": ds_db.get_dataset(dataset_id).class_names[0], "split": None,
            "sha256": "0" * 64, "path": "images/none.png", "width": 32, "height": 32, "source": "test",
            "gan_run_id": gan_run_id, "checkpoint_step": 4, "seed": 0}])
        classifier_run_id = runs_db.create_run("classifier", dataset_id, {}, seed=0, recipe="real",
                                               started_by="admin")
        runs_db.finish_run(classifier_run_id, "succeeded", result={})
    yield home, {"dataset_id": dataset_id, "gan_run_id": gan_run_id, "candidate_id": candidate_id,
                 "classifier_run_id": classifier_run_id, "folder": folder}


@pytest.fixture()
def world(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    src, ids = built
    with active_home(copy_home(src, tmp_path / "home"), monkeypatch):
        yield World(root=tmp_path, npz=_npz(tmp_path / "blood.npz"), **ids)


def _name(user: auth.User | None) -> str:
    return user.username if user is not None else "reviewer"


# (name, roles allowed, action(world, user)). Each action is one call of a mutating domain function.
Action = Callable[[World, Any], Any]
CASES: list[tuple[str, frozenset[str], Action]] = [
    # GAN runs and the jobs around them
    ("gan_runs.start_gan_run", ADMIN,
     lambda w, u: gan_runs.start_gan_run(w.dataset_id, GAN, launch=False, user=u)),
    ("gan_runs.resume_gan_run", ADMIN,
     lambda w, u: gan_runs.resume_gan_run(w.gan_run_id, launch=False, user=u)),
    ("generation.start_generation", ADMIN,
     lambda w, u: generation.start_generation(w.gan_run_id, 2, user=u,
                                                                                launch=False)),
    ("generation.start_scoring", ADMIN,
     lambda w, u: generation.start_scoring(w.dataset_id, w.gan_run_id, user=u,
                                                                             launch=False)),
    ("generation.start_quality", ADMIN,
     lambda w, u: generation.start_quality(w.gan_run_id, per_class=8, user=u,
                                                                             launch=False)),
    ("generation.start_judge", ADMIN,
     lambda w, u: generation.start_judge(w.dataset_id, user=u, launch=False)),
    ("embedding_jobs.start_embedding", EVERYONE,
     lambda w, u: embedding_jobs.start_embedding(
         w.classifier_run_id, 100, user=u, launch=False)),
    # classifier runs and groups
    ("retrain.start_classifier_run", ADMIN,
     lambda w, u: retrain.start_classifier_run(w.dataset_id, "real", CLASSIFIER,
                                                                              launch=False, user=u)),
    ("groups.start_group", ADMIN,
     lambda w, u: groups.start_group(w.dataset_id, ["real"], [0], "t", CLASSIFIER, launch=False, user=u)),
    ("groups.start_ablation", ADMIN,
     lambda w, u: groups.start_ablation(w.dataset_id, CLASSIFIER, "0", launch=False, user=u)),
    ("groups.start_seeds", ADMIN,
     lambda w, u: groups.start_seeds(w.dataset_id, "real", "0 1", CLASSIFIER, launch=False, user=u)),
    ("groups.start_training", ADMIN,
     lambda w, u: groups.start_training(w.dataset_id, "real", CLASSIFIER, launch=False, user=u)),
    ("groups.cancel_group (admin's group)", ADMIN, lambda w, u: groups.cancel_group(w.admin_group(), u)),
    # cancelling
    ("jobs.cancel (another's run)", ADMIN, lambda w, u: jobs.cancel(w.admin_run(), u)),
    ("jobs.cancel (own run)", EVERYONE, lambda w, u: jobs.cancel(w.own_run(u), u)),
    # importing
    ("importing.import_folder", ADMIN,
     lambda w, u: importing.import_folder(w.folder, "again", size=32, user=u)),
    ("importing.import_demo", ADMIN, lambda w, u: importing.import_demo("demo", per_class=3, size=32, user=u)),
    ("importing.import_bloodmnist", ADMIN,
     lambda w, u: importing.import_bloodmnist(w.npz, "blood", size=32, user=u)),
    ("importing.download_bloodmnist", ADMIN,
     lambda w, u: importing.download_bloodmnist("blood", size=28, user=u)),
    ("import_jobs.start_import", ADMIN,
     lambda w, u: import_jobs.start_import("demo", "queued-demo", per_class=3, size=32, user=u, launch=False)),
    # user management
    ("auth.create_user", ADMIN, lambda w, u: auth.create_user("newbie", "long enough pw", "viewer", user=u)),
    ("auth.set_role (promote oneself)", ADMIN, lambda w, u: auth.set_role(u.username, "admin", user=u)),
    ("auth.set_role (another)", ADMIN, lambda w, u: auth.set_role("other", "reviewer", user=u)),
    ("auth.set_password (another)", ADMIN, lambda w, u: auth.set_password("other", "long enough pw", user=u)),
    ("auth.set_password (own)", EVERYONE, lambda w, u: auth.set_password(u.username, "long enough pw", user=u)),
    ("auth.disable_user", ADMIN, lambda w, u: auth.disable_user("other", user=u)),
    ("auth.unlock_user", ADMIN, lambda w, u: auth.unlock_user("other", user=u)),
    # review
    ("review_model.decide", REVIEWERS,
     lambda w, u: review_model.decide([w.candidate_id], _name(u), "accept", user=u)),
    ("review_model.undo_last", REVIEWERS, lambda w, u: review_model.undo_last(w.dataset_id, _name(u), user=u)),
    ("review_model.set_review_settings", ADMIN,
     lambda w, u: review_model.set_review_settings(
         w.dataset_id, review_model.ReviewSettings(review_model.ConsensusRule(1, 1), {}), u)),
    ("review_model.enable_blind_test", ADMIN,
     lambda w, u: review_model.enable_blind_test(w.dataset_id, "reviewer", 0.1, user=u)),
    ("review_model.adjudicate", ADMIN, lambda w, u: review_model.adjudicate([w.candidate_id], u, "accept")),
    # export
    ("export.export_curated (zip)", REVIEWERS,
     lambda w, u: export.export_curated(w.dataset_id, w.root / "out.zip", "zip", user=u)),
    ("export.export_curated (hf)", REVIEWERS,
     lambda w, u: export.export_curated(w.dataset_id, w.root / "out_hf", "hf", user=u)),
]


@pytest.fixture()
def no_download(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """download_bloodmnist gets the test's npz instead of going to the internet."""
    import wbc_core.data.bloodmnist as bloodmnist

    monkeypatch.setattr(bloodmnist, "download_bloodmnist", lambda size, root: world.npz)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("name", "allowed", "action"), CASES, ids=[c[0] for c in CASES])
def test_every_mutating_function_checks_the_role(world: World, no_download: None, name: str,
                                                 allowed: frozenset[str], action: Action, role: str) -> None:
    user = account(role)
    if role in allowed:
        action(world, user)  # no PermissionDenied (nor any other error)
    else:
        with pytest.raises(PermissionDenied, match=r"may not|cancel"):
            action(world, user)


NAMELESS = [c for c in CASES if "own" not in c[0] and "oneself" not in c[0]]  # these name the acting user's own


@pytest.mark.parametrize(("name", "allowed", "action"), NAMELESS, ids=[c[0] for c in NAMELESS])
def test_no_user_and_disabled_admins_are_refused(world: World, no_download: None, name: str,
                                                 allowed: frozenset[str], action: Action) -> None:
    with pytest.raises(PermissionDenied, match="sign in first"):
        action(world, None)
    users_db.insert_user("second-admin", "", "admin")  # the last enabled admin cannot be disabled
    auth.disable_user("admin", user=account("second-admin"))
    with pytest.raises(PermissionDenied, match="disabled"):
        action(world, account("admin"))


def test_a_refused_call_changes_nothing(world: World) -> None:
    before = len(runs_db.list_runs(limit=1000))
    with pytest.raises(PermissionDenied):
        groups.start_ablation(world.dataset_id, CLASSIFIER, "0 1", launch=False, user=account("reviewer"))
    with pytest.raises(PermissionDenied):
        auth.set_role("viewer", "admin", user=account("viewer"))
    assert len(runs_db.list_runs(limit=1000)) == before
    assert auth.get_user("viewer").role == "viewer"


def test_runs_record_who_started_and_who_cancelled_them(world: World) -> None:
    admin = account("admin")
    started = [gan_runs.start_gan_run(world.dataset_id, GAN, launch=False, user=admin),
               gan_runs.resume_gan_run(world.gan_run_id, launch=False, user=admin),
               retrain.start_classifier_run(world.dataset_id, "real", CLASSIFIER, launch=False, user=admin),
               generation.start_generation(world.gan_run_id, 2, user=admin, launch=False),
               *groups.start_ablation(world.dataset_id, CLASSIFIER, "0", launch=False, user=admin).run_ids]
    assert [runs_db.get_run(r).started_by for r in started] == ["admin"] * len(started)
    assert jobs.cancel(started[0], admin)
    assert runs_db.get_run(started[0]).cancelled_by == "admin"
    own = world.own_run(account("viewer"))
    assert jobs.cancel(own, account("viewer"))
    assert runs_db.get_run(own).cancelled_by == "viewer"


def test_the_systems_own_stop_is_named_and_separate(world: World) -> None:
    run_id = world.admin_run()
    with pytest.raises(ValueError, match="system"):
        jobs.request_stop(run_id, by="mallory")
    assert jobs.request_stop(run_id, by="system:test")
    assert runs_db.get_run(run_id).cancelled_by == "system:test"


def test_a_refused_group_cancel_stops_no_run(world: World) -> None:
    group = world.admin_group()
    with pytest.raises(PermissionDenied):
        groups.cancel_group(group, account("reviewer"))
    assert all(r.status == "queued" for r in groups.group_runs(group))


# --- the CLI acts as a named local account ------------------------------------------------------------------

def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    from wbc_core.cli.main import main

    code = main(["--json", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_owner_is_admin_on_an_empty_database_and_named_accounts_must_exist(wbc_home, capsys) -> None:
    code, text = _cli(capsys, "--as", "ghost", "demo", "--name", "d", "--per-class", "3", "--size", "32")
    assert code == 2 and "no account 'ghost'" in text and not auth.has_users()  # --as never creates an account
    code, text = _cli(capsys, "demo", "--name", "d", "--per-class", "3", "--size", "32")
    assert code == 0, text
    assert [(u.username, u.role) for u in auth.list_users()] == [("local", "admin")]  # the machine's owner
    assert runs_db.list_runs(limit=10) == [] and ds_db.get_dataset("d").kind == "demo"
    account("viewer", "vic")
    code, text = _cli(capsys, "demo", "--name", "e", "--per-class", "3", "--size", "32", "--as", "vic")
    assert code == 2 and "viewer 'vic' may not import" in text
    code, text = _cli(capsys, "--as", "vic", "user", "add", "mallory", "--role", "admin", "--password-stdin")
    assert code == 2 and "may not manage users" in text and auth.get_user("mallory") is None


def test_cli_default_account_is_not_created_once_other_accounts_exist(wbc_home, capsys) -> None:
    account("admin", "ann")
    code, text = _cli(capsys, "demo", "--name", "d", "--per-class", "3", "--size", "32")
    assert code == 2 and "no account 'local'" in text and "--as" in text
    assert auth.get_user("local") is None
    code, text = _cli(capsys, "--as", "ann", "demo", "--name", "d", "--per-class", "3", "--size", "32")
    assert code == 0, text


def test_cli_review_records_votes_only_for_reviewer_accounts(world: World, capsys) -> None:
    from db import decisions as decisions_db

    ids = str(world.candidate_id)
    for who, words in (("ghost", "no reviewer account 'ghost'"), ("viewer", "viewer 'viewer' may not review")):
        code, text = _cli(capsys, "review", "--dataset", "cells", "--reviewer", who, "--accept", "--ids", ids)
        assert code == 2 and words in text
    code, text = _cli(capsys, "--as", "viewer", "review", "--dataset", "cells", "--accept", "--ids", ids)
    assert code == 2 and "may not review" in text
    code, text = _cli(capsys, "--as", "admin", "review", "--dataset", "cells", "--reviewer", "reviewer",
                      "--accept", "--ids", ids)
    assert code == 2 and "different accounts" in text
    assert decisions_db.current_decisions(world.dataset_id) == []
    code, text = _cli(capsys, "review", "--dataset", "cells", "--reviewer", "reviewer", "--accept", "--ids", ids)
    assert code == 0, text
    code, text = _cli(capsys, "--as", "admin", "review", "--dataset", "cells", "--reject", "--ids", ids)
    assert code == 0, text
    assert {(d["reviewer"], d["verdict"]) for d in decisions_db.current_decisions(world.dataset_id)} == {
        ("reviewer", "accept"), ("admin", "reject")}


def test_cli_cancel_checks_the_role_and_runs_show_who(world: World, capsys) -> None:
    import json

    run_id = world.admin_run()
    code, text = _cli(capsys, "--as", "reviewer", "cancel", str(run_id))
    assert code == 2 and "may not cancel" in text and runs_db.get_run(run_id).status == "queued"
    code, text = _cli(capsys, "cancel", str(run_id), "--as", "admin")
    assert code == 0, text
    code, text = _cli(capsys, "runs", "--kind", "score")
    listed = {r["id"]: r for r in json.loads(text.splitlines()[0])["runs"]}
    assert (listed[run_id]["started_by"], listed[run_id]["cancelled_by"]) == ("admin", "admin")
    from wbc_core.cli.main import main

    assert main(["runs", "--kind", "score"]) == 0  # the text table says it too
    assert "started by admin, cancelled by admin" in capsys.readouterr().out
