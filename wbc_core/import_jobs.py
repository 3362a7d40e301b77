"""Imports as background jobs: a folder on the server, an uploaded zip, the demo dataset or BloodMNIST.

`start_import` checks what it cheaply can (a free name, a valid size, a folder the server may read) so the page
gets a plain error at once, then queues an "import" job; `run_import_job` does the reading, decoding and storing
in the worker, with progress and cancel. The Data page only enqueues and polls, so importing 12,000 cells never
blocks the server or dies with a closed tab.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from db import datasets as ds_db
from db import runs as runs_db
from wbc_core import jobs
from wbc_core.auth import User, authorize
from wbc_core.context import current
from wbc_core.data import SplitConfig
from wbc_core.data.records import UNSAFE_PATH
from wbc_core.types import ProgressEvent

SOURCE_KINDS = ("folder", "upload", "demo", "bloodmnist")
UPLOADS = "uploads"  # under the home's incoming/ folder: uploaded zips wait here for their job


class ImportCancelled(Exception):
    """Raised from the progress callback when someone cancelled the import job (its staging is removed)."""


class ImportRefused(ValueError):
    """An import that cannot be started as asked; the message says why and what to do."""


def allowed_folder(text: str) -> Path:
    """The folder a web user typed, resolved, if it lies under one of the server's import roots.

    Never lists what is there: a refused or missing path gets a message naming only the path and the roots.
    """
    if not text or not text.strip():
        raise ImportRefused("enter the folder to import (a path on the server)")
    path = Path(text.strip()).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    resolved = path.resolve()
    roots = current().settings.import_roots
    if not any(resolved == root or root in resolved.parents for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise ImportRefused(f"{text.strip()!r} is not inside a folder this server imports from ({shown}); copy the "
                            "cells there, or ask the administrator to add the folder to WBC_IMPORT_ROOTS")
    if not resolved.exists():
        raise ImportRefused(f"{text.strip()!r} does not exist on the server")
    return resolved


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ImportRefused("a dataset name is required")
    try:
        ds_db.get_dataset(name)
    except ds_db.DatasetNotFound:
        return name
    raise ds_db.DatasetExists(f"a dataset named {name!r} already exists; choose another name")


def _save_upload(data: bytes, filename: str) -> Path:
    folder = current().paths.incoming / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename or "upload.zip").name)[-80:] or "upload.zip"
    path = folder / f"{secrets.token_hex(6)}-{safe}"
    path.write_bytes(data)
    return path


def start_import(source_kind: str, name: str, *, folder: str | None = None, upload: bytes | None = None,
                 upload_name: str | None = None, size: int = 64, split: SplitConfig = SplitConfig(),
                 per_class: int = 60, user: User, restrict_to_roots: bool = True, launch: bool = True,
                 reference: str | None = None) -> int:
    """Queue an import job and return its run id (errors about the request itself are raised here).

    reference: the dataset the new cells are compared with after the import (default: the biggest real one)."""
    from wbc_core.importing import SIZES

    if source_kind not in SOURCE_KINDS:
        raise ImportRefused(f"the source must be one of {', '.join(SOURCE_KINDS)}, got {source_kind!r}")
    who = authorize(user, "import").username
    if source_kind != "bloodmnist" and int(size) not in SIZES:
        raise ImportRefused(f"the working size must be one of {', '.join(map(str, SIZES))}, got {size}")
    name = _check_name(name)
    config: dict[str, Any] = {"source_kind": source_kind, "name": name, "size": int(size), "split": asdict(split),
                              "per_class": int(per_class)}
    if reference:
        config["reference"] = ds_db.get_dataset(reference).name  # DatasetNotFound at once, not in the job
    if source_kind == "folder":
        path = allowed_folder(folder or "") if restrict_to_roots else Path(folder or "").expanduser()
        config.update(source=str(path), shown_source=(folder or "").strip())
    elif source_kind == "upload":
        if not upload:
            raise ImportRefused("choose a zip file to upload first")
        saved = _save_upload(upload, upload_name or "upload.zip")
        config.update(source=str(saved), shown_source=upload_name or "upload.zip", delete_source=True)
    try:
        return jobs.submit("import", None, config, seed=split.seed, started_by=who, launch=launch)
    except BaseException:
        if config.get("delete_source"):
            Path(config["source"]).unlink(missing_ok=True)
        raise


def run_import_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body of "import": it acts as the account that started it (checked again, so a revoked role stops it)."""
    from wbc_core import auth, importing

    c = run.config
    user = auth.get_user(run.started_by or "")
    if user is None:
        raise ImportRefused(f"the account {run.started_by!r} that started this import no longer exists")

    def progress(done: int, total: int) -> None:
        if ctx.should_stop():
            raise ImportCancelled("the import was cancelled; nothing was stored")
        ctx.progress(ProgressEvent(step=done, total=max(total, 1), message=f"{done:,} / {total:,} files"))

    try:
        if c["source_kind"] == "demo":
            result = importing.import_demo(c["name"], per_class=int(c["per_class"]), size=int(c["size"]), user=user)
        elif c["source_kind"] == "bloodmnist":
            result = importing.download_bloodmnist(c["name"], size=int(c["size"]), user=user)
        else:
            result = importing.import_folder(c["source"], c["name"], size=int(c["size"]),
                                             split=SplitConfig(**c["split"]), progress=progress, user=user)
    except ImportCancelled as exc:
        return {"cancelled": str(exc)}
    except Exception as exc:  # the job's error: the user's own file name, and why an all-unsafe zip failed
        message = _shown(str(exc), c)
        if message != str(exc) or _all_unsafe(c):
            # from None: the chained original would print the server's path in the job's stored traceback.
            raise ImportRefused(_all_unsafe(c) or message) from None
        raise
    finally:
        if c.get("delete_source"):
            Path(c["source"]).unlink(missing_ok=True)
    skipped = [{**s, "source": _shown(s["source"], c), "message": _shown(s["message"], c)}
               for s in result.report["skipped"]]
    unsafe = [s for s in skipped if s["reason"] == UNSAFE_PATH]
    warning = ""
    if unsafe:
        where = c.get("shown_source") or "the source"
        warning = (f"{len(unsafe):,} entr{'ies' if len(unsafe) != 1 else 'y'} of {where} had unsafe paths "
                   "and were not imported: "
                   + "; ".join(f"{s['source']} ({s['message']})" for s in unsafe[:5])
                   + (f"; and {len(unsafe) - 5:,} more" if len(unsafe) > 5 else ""))
    # The demo is drawn, not imported, and labelled "not real cells" everywhere: nothing to compare.
    shift = ({"checked": False, "reference": None, "message": "the demo dataset is drawn, not compared"}
             if c["source_kind"] == "demo" else compare_with_reference(
                 result.dataset_id, c.get("reference"),
                 lambda message: ctx.progress(ProgressEvent(step=1, total=1, message=message))))
    if shift.get("looks_different"):
        warning = f"{warning}\n\n{shift['message']}" if warning else shift["message"]
    return {"dataset_id": result.dataset_id, "name": result.name, "kind": result.kind,
            "classes": result.class_counts, "skipped": skipped,
            "converted": result.report["converted"], "empty_classes": result.report["empty_classes"],
            "seconds": result.seconds, "summary": _shown(result.summary, c), "unsafe": len(unsafe),
            "warning": warning, "distribution": shift}


def compare_with_reference(dataset_id: int, reference: str | None = None,
                           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """wbc_core.ood.dataset_shift after an import (job or CLI); a failure here never fails the import itself."""
    from wbc_core import ood

    try:
        return ood.dataset_shift(dataset_id, reference, progress=progress)
    except Exception as exc:  # noqa: BLE001 - the cells are imported; only the comparison is missing
        return {"checked": False, "reference": reference,
                "message": f"the cells could not be compared with a reference dataset: {exc}"}


def _shown(text: str, config: dict[str, Any]) -> str:
    """text with the server's temporary path of an upload (or folder) replaced by the name the user gave."""
    source, shown = config.get("source"), config.get("shown_source")
    if not source or not shown or source == shown:
        return text
    return text.replace(source, shown).replace(Path(source).name, shown)


def _all_unsafe(config: dict[str, Any]) -> str:
    """A plain message when every entry of an uploaded zip has an unsafe path ('' otherwise, or if unreadable)."""
    from wbc_core.data.sources import open_source

    if config.get("source_kind") != "upload":
        return ""
    try:
        listing = open_source(Path(config["source"]))
    except Exception:  # noqa: BLE001 - the original error is reported instead
        return ""
    try:
        if listing.files or not listing.skipped or any(s.reason != UNSAFE_PATH for s in listing.skipped):
            return ""
    finally:
        listing.close()
    return (f"every entry of {config.get('shown_source') or 'the zip'} ({len(listing.skipped):,}) has an unsafe path "
            "(absolute, with '..', or a link), so nothing was imported; zip the class folders themselves, "
            "with paths such as neutrophil/cell1.jpg")



def get_job(run_id: int) -> runs_db.RunInfo:
    """An import job by id (the Data page follows the one its session started)."""
    run = runs_db.get_run(run_id)
    if run.kind != "import":
        raise ValueError(f"run {run_id} is a {run.kind} run, not an import")
    return run
