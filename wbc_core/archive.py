"""Everyday management of datasets and runs: rename, and "delete", which archives.

Review decisions are append-only and images with decisions cannot be deleted (database triggers), so deleting
a dataset or a run archives it instead: the row gets archived_at/archived_by, it disappears from every list
and picker, and everything it owned stays for the audit: its cells, their decisions, its runs (archived with
it), metrics and files (left where they are: cells live under images/<import folder>/ and runs under
runs/<id>/, neither named after the dataset, so nothing collides). An archived dataset is renamed
"<name> (deleted #<id>)", which frees its name for a new import.

Permissions (checked here, in the domain): datasets need "import" (who may create datasets may rename and
retire them), runs need "train".
"""

from __future__ import annotations

from typing import Any

from db import datasets as ds_db
from db import runs as runs_db
from db import validate
from wbc_core.auth import User, authorize

DATASET_PERMISSION = "import"
RUN_PERMISSION = "train"


def archived_name(name: str, dataset_id: int) -> str:
    """The name an archived dataset carries: unique (by id), within the name length limit."""
    suffix = f" (deleted #{dataset_id})"
    return name[: validate.DATASET_NAME_MAX - len(suffix)] + suffix


def rename_dataset(name_or_id: str | int, new_name: str, *, user: User) -> ds_db.DatasetInfo:
    """Rename a dataset; its cells, runs and decisions follow it (they refer to it by id)."""
    authorize(user, DATASET_PERMISSION)
    info = ds_db.get_dataset(name_or_id)
    new_name = (new_name or "").strip()
    if not new_name:
        raise ValueError("give the dataset a new name")
    if new_name == info.name:
        return info
    ds_db.rename_dataset(info.id, new_name)
    return ds_db.get_dataset(info.id)


def delete_dataset(name_or_id: str | int, *, user: User) -> dict[str, Any]:
    """Archive a dataset and its runs (see the module docstring); refuses while one of its runs is active."""
    who = authorize(user, DATASET_PERMISSION).username
    info = ds_db.get_dataset(name_or_id)
    if info.archived_at is not None:
        raise ValueError(f"dataset {info.name!r} was deleted already")
    runs = runs_db.list_runs(dataset_id=info.id, limit=100_000)
    ds_db.archive_dataset(info.id, archived_name(info.name, info.id), who)
    return {"dataset_id": info.id, "name": info.name, "archived_as": archived_name(info.name, info.id),
            "runs_archived": [r.id for r in runs], "by": who}


def delete_run(run_id: int, *, user: User) -> dict[str, Any]:
    """Archive an ended run: hidden from lists, baselines and pickers; its metrics and files are kept."""
    who = authorize(user, RUN_PERMISSION).username
    info = runs_db.get_run(int(run_id))
    runs_db.archive_run(info.id, who)
    return {"run_id": info.id, "kind": info.kind, "dataset": info.dataset_name, "by": who}


def archived_datasets() -> list[ds_db.DatasetInfo]:
    """Datasets that were deleted (archived), newest first, for the admin's record."""
    return [d for d in ds_db.list_datasets(include_archived=True) if d.archived_at is not None]
