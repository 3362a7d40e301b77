"""Deleting and renaming datasets and runs: deletion archives (hidden from lists, kept for the audit, decisions
untouched, the name freed for reuse), role-checked in the domain, on SQLite and PostgreSQL; and the CLI."""

from __future__ import annotations

import json

import pytest
from support import account

from db import datasets, decisions, runs
from wbc_core import archive, auth
from wbc_core.cli import main as cli
from wbc_core.context import current

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def _dataset(name: str = "cells") -> int:
    rows = [dict(origin="real", class_name="a", split="train", sha256=f"r{i}", path=f"images/x/p{i}", width=8,
                 height=8, source=f"a/cell_{i}.jpg") for i in range(2)]
    return datasets.create_dataset(name, "real", "src", ["a", "b"], {}, "h", {}, rows)


def _candidate(dataset_id: int) -> int:
    return datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a", split=None, sha256="s0",
                                                 path="images/x/q0", width=8, height=8)])[0]


def _finished_run(dataset_id: int, recipe: str = "real") -> int:
    run_id = runs.create_run("classifier", dataset_id, {"model": "small_cnn"}, 0, recipe=recipe)
    runs.finish_run(run_id, "succeeded", {})
    return run_id


def test_deleting_a_dataset_archives_it_with_its_runs_and_keeps_decisions(wbc_home):
    admin = account("admin")
    ds = _dataset()
    cand = _candidate(ds)
    decided = decisions.record_decisions([cand], "admin", "accept")
    run_id = _finished_run(ds)

    out = archive.delete_dataset("cells", user=admin)

    assert out["archived_as"] == f"cells (deleted #{ds})" and out["runs_archived"] == [run_id]
    assert [d.name for d in datasets.list_datasets()] == []  # hidden from lists and pickers
    with pytest.raises(datasets.DatasetNotFound):
        datasets.get_dataset("cells")
    kept = datasets.get_dataset(ds)  # by id: still there, with who and when
    assert kept.archived_at is not None and kept.archived_by == "admin"
    assert [d.id for d in archive.archived_datasets()] == [ds]
    assert runs.list_runs() == [] and runs.get_run(run_id).archived_by == "admin"
    history = decisions.decision_history(cand)  # the audit keeps every decision
    assert len(history) == len(decided) == 1
    # The name is free again: a new dataset of the same name is a different one.
    again = _dataset("cells")
    assert again != ds and datasets.get_dataset("cells").id == again


def test_renaming_a_dataset_keeps_its_runs_and_refuses_a_taken_name(wbc_home):
    admin = account("admin")
    ds = _dataset()
    _dataset("other")
    run_id = _finished_run(ds)
    assert archive.rename_dataset("cells", " cells-v2 ", user=admin).name == "cells-v2"
    assert runs.get_run(run_id).dataset_name == "cells-v2"
    with pytest.raises(datasets.DatasetExists):
        archive.rename_dataset("cells-v2", "other", user=admin)
    with pytest.raises(ValueError, match="new name"):
        archive.rename_dataset("cells-v2", "  ", user=admin)


def test_only_permitted_roles_delete_or_rename(wbc_home):
    reviewer = account("reviewer")
    ds = _dataset()
    run_id = _finished_run(ds)
    for call in (lambda: archive.delete_dataset("cells", user=reviewer),
                 lambda: archive.rename_dataset("cells", "x", user=reviewer),
                 lambda: archive.delete_run(run_id, user=reviewer)):
        with pytest.raises(auth.PermissionDenied):
            call()
    assert datasets.get_dataset("cells").archived_at is None and runs.get_run(run_id).archived_at is None


def test_a_run_is_deleted_only_once_it_has_ended_and_then_hidden(wbc_home):
    admin = account("admin")
    ds = _dataset()
    active = runs.create_run("classifier", ds, {}, 0, recipe="real")
    with pytest.raises(ValueError, match="cancel it"):
        archive.delete_run(active, user=admin)
    with pytest.raises(ValueError, match="still queued or running"):
        archive.delete_dataset("cells", user=admin)
    done = _finished_run(ds)
    archive.delete_run(done, user=admin)
    assert [r.id for r in runs.list_runs()] == [active]
    assert [r.id for r in runs.list_runs(include_archived=True)] == [done, active]
    with pytest.raises(runs.RunNotFound, match="deleted already"):
        archive.delete_run(done, user=admin)


def test_cli_dataset_rename_delete_and_run_delete(wbc_home, capsys):
    account("admin", current().settings.local_user)  # the CLI's default account
    ds = _dataset()
    run_id = _finished_run(ds)
    assert cli.main(["dataset", "rename", "cells", "blood"]) == 0
    assert datasets.get_dataset(ds).name == "blood"
    capsys.readouterr()
    # Without a terminal and without --yes nothing is deleted.
    assert cli.main(["run", "delete", str(run_id)]) == 2
    assert "--yes" in capsys.readouterr().err and runs.get_run(run_id).archived_at is None
    assert cli.main(["run", "delete", str(run_id), "--yes"]) == 0
    assert runs.get_run(run_id).archived_at is not None
    capsys.readouterr()
    assert cli.main(["--json", "dataset", "delete", "blood", "--yes"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["archived_as"] == f"blood (deleted #{ds})"
    assert cli.main(["datasets"]) == 0 and "blood" not in capsys.readouterr().out
