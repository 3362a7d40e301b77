"""Shared plumbing of the benches that run the app's own loop in a throw-away WBC_HOME (feedback, product_loop).

- ThrowawayHome: a context on a temp home with its own SQLite database, made current while used, removed after.
- run_inline: execute a queued job's body in this process, as the worker would, and close the run.
- subset_folder: the first N files per class of an ImageFolder, copied (quick modes).
- regime_rows / derive_dataset: a data regime as a dataset of the app (see bench/product_loop.py's docstring).
- budget_epochs: epochs that give every arm of a regime the same image budget.
- machine: what the numbers were measured on.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import random
import shutil
import socket
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MIN_STEPS = 8  # below this many optimiser steps make_scheduler swaps one-cycle for cosine: arms must share one


class ThrowawayHome:
    """A fresh WBC_HOME (temp folder, SQLite) with an admin and a reviewer account; `with` makes it current."""

    def __init__(self, prefix: str) -> None:
        from wbc_core import context

        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        home = self.tmp / "home"
        self.ctx = context.build("cli", home=home, db_url=f"sqlite:///{home / 'wbc.db'}")
        self._using = None

    def __enter__(self) -> ThrowawayHome:
        from wbc_core.context import using

        self._using = using(self.ctx)
        self._using.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._using is not None:
            self._using.__exit__(*exc)
            self._using = None

    def accounts(self) -> tuple[Any, Any]:
        """(admin, scripted reviewer) user accounts of this home, created on first call."""
        from db import users as users_db

        existing = getattr(self, "_accounts", None)
        if existing is None:
            existing = (users_db.insert_user("bench-admin", "", "admin", None, "local"),
                        users_db.insert_user("scripted", "", "reviewer", None, "local"))
            self._accounts = existing
        return existing

    def close(self) -> None:
        self.ctx.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_inline(run_id: int) -> dict[str, Any]:
    """Execute a queued job's body in this process (as the worker would) and close the run."""
    from db import runs as runs_db
    from wbc_core.jobs.kinds import kind
    from wbc_core.jobs.worker import JobContext

    runs_db.mark_started(run_id, os.getpid(), socket.gethostname())
    run = runs_db.get_run(run_id)
    try:
        result = kind(run.kind).load()(run, JobContext(run))
    except BaseException as exc:
        runs_db.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    runs_db.finish_run(run_id, "succeeded", result=result)
    return result


def subset_folder(src: Path, dst: Path, per_class: int) -> Path:
    """src itself (per_class 0), or dst filled with copies of the first per_class files of each class folder."""
    if not per_class:
        return src
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:per_class]:
            shutil.copyfile(f, dst / folder.name / f.name)
    return dst


# -- regimes ---------------------------------------------------------------------------------------------------

def regime_caps(regime: str, class_names: Sequence[str], rare_classes: Sequence[str], rare_n: int) -> dict[str, int]:
    """Real train cells kept per class: "all" keeps every one, "nK" K per class, "rare" rare_n of the rare classes."""
    if regime == "all":
        return {}
    if regime == "rare":
        unknown = [c for c in rare_classes if c not in class_names]
        if unknown:
            raise ValueError(f"rare classes {unknown} are not classes of the data ({', '.join(class_names)})")
        return {c: rare_n for c in rare_classes}
    if regime.startswith("n") and regime[1:].isdigit() and int(regime[1:]) > 0:
        return dict.fromkeys(class_names, int(regime[1:]))
    raise ValueError(f"unknown regime {regime!r}: use all, rare or nK (K real train cells per class, e.g. n50)")


def regime_rows(rows: Sequence[Any], caps: dict[str, int], seed: int) -> list[Any]:
    """The rows of a regime: every val and test row, and per class at most caps[class] train rows (all without cap).

    Which train rows stay is a seeded shuffle of the class's rows sorted by sha256: the choice depends on the cells,
    not on their ids or the input order. The input order is kept, so val/test rows come out in the same order in
    every regime.
    """
    by_class: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        if row.split == "train":
            by_class[row.class_name].append(row)
    kept: set[int] = set()
    rng = random.Random(seed)
    for name in sorted(by_class):
        items = sorted(by_class[name], key=lambda r: r.sha256)
        rng.shuffle(items)
        kept.update(id(r) for r in items[: caps.get(name, len(items))])
    return [r for r in rows if r.split != "train" or id(r) in kept]


def derive_dataset(base_id: int, name: str, rows: Sequence[Any], note: dict[str, Any]) -> int:
    """A dataset of the app holding these real rows of base_id (same files, same splits): one data regime."""
    from db import datasets as ds_db
    from wbc_core.data.split import split_fingerprint

    base = ds_db.get_dataset(base_id)
    bad = [r.id for r in rows if r.origin != "real"]
    if bad:
        raise ValueError(f"a regime holds real cells only, got synthetic ids {bad[:5]}")
    images = [{"origin": "real", "class_name": r.class_name, "split": r.split, "sha256": r.sha256, "path": r.path,
               "width": base.image_size, "height": base.image_size, "source": f"dataset {base_id} image {r.id}"}
              for r in rows]
    split_hash = split_fingerprint((r.sha256, r.class_name, r.split) for r in rows)
    return ds_db.create_dataset(name, "real", f"{base.source} ({name})", base.class_names,
                                {**base.split_config, "regime": note}, split_hash,
                                {"derived_from": base_id, **note}, images, image_size=base.image_size)


def cells_hash(shas: Sequence[str]) -> str:
    """Order-free fingerprint of a set of cells (their sha256s)."""
    return hashlib.sha256("\n".join(sorted(shas)).encode()).hexdigest()[:16]


# -- budgets ---------------------------------------------------------------------------------------------------

def budget_epochs(budget: int, n: int, batch: int) -> int:
    """Epochs so a training set of n cells sees about `budget` images: every arm of a regime gets the same budget.

    At least MIN_STEPS optimiser steps in all, so every arm runs the same (one-cycle) schedule."""
    if n <= 0 or batch <= 0:
        raise ValueError(f"need a positive set size and batch, got {n} cells and batch {batch}")
    return max(1, round(budget / n), math.ceil(MIN_STEPS / math.ceil(n / batch)))


def validation_interval(epochs: int, validations: int = 4) -> int:
    """ClassifierConfig.val_every for an arm of `epochs` epochs: about `validations` val passes (the last epoch is
    always one). A one-cycle arm's best epoch is nearly always its last (product_loop_full.json: 36 of 38 arms), and
    a 25-epoch n50 arm spent ~60% of its time on per-epoch val passes."""
    return max(1, math.ceil(epochs / max(1, validations)))


def finetune_epochs(epochs: int, fraction: float = 0.25) -> int:
    """Epochs of the two-stage strategy's real-only fine-tune: about `fraction` of the run, at least 1, and fewer
    than the run's epochs (stage 1 needs one); 0 when the run has a single epoch."""
    if epochs < 2:
        return 0
    return min(epochs - 1, max(1, round(epochs * fraction)))


def machine() -> dict[str, Any]:
    import torch

    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def decide_as_reviewer(rows: list[Any], decisions: Any, names: list[str], user: Any) -> None:  # noqa: ANN401
    """One decide() call per class and outcome, as a reviewer working class by class on the Review page."""
    from wbc_core import review_model

    why = {"disagree": ~decisions.agrees, "unrealistic": decisions.agrees & ~decisions.realistic,
           "memorised": decisions.memorised & decisions.agrees & decisions.realistic,
           "duplicate": decisions.duplicate}
    reasons = {"disagree": "does not look like its class", "unrealistic": "does not look like a real cell",
               "memorised": "a copy of a real cell", "duplicate": "a near-duplicate of an accepted cell"}
    for c in names:
        mine = [i for i, r in enumerate(rows) if r.class_name == c]
        acc = [rows[i].id for i in mine if bool(decisions.accepted[i])]
        if acc:
            review_model.decide(acc, "scripted", "accept", user=user)
        for rule, mask in why.items():
            ids = [rows[i].id for i in mine if bool(mask[i]) and not bool(decisions.accepted[i])]
            if ids:
                review_model.decide(ids, "scripted", "reject", reason=reasons[rule], user=user)
