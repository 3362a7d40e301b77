"""Integration on real PBC cells (../shared/data/pbc128): the whole loop, small budgets.

In CI (CI=true) a missing data folder FAILS the run: a real-data check that silently skips proves
nothing. On a developer's fresh clone without ../shared it is skipped with a loud reason.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support import account, skip_unless_ci

ROOT = Path(__file__).resolve().parent.parent
PBC128 = Path(os.environ.get("WBC_PBC128", ROOT.parent / "shared" / "data" / "pbc128"))
PBC_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


@pytest.fixture(scope="module")
def pbc128() -> Path:
    if not PBC128.is_dir():
        skip_unless_ci(f"real-data folder {PBC128} is missing (set WBC_PBC128 or provide ../shared/data/pbc128)")
    return PBC128


@pytest.mark.realdata
@pytest.mark.slow
def test_whole_loop_on_real_pbc_cells(pbc128, wbc_home, capsys):
    from db import runs as runs_db
    from wbc_core import jobs, review_model
    from wbc_core.gan_runs import generate_candidates, start_gan_run
    from wbc_core.importing import import_folder
    from wbc_core.retrain import start_classifier_run

    started = time.monotonic()
    result = import_folder(pbc128, "pbc128", size=32, user=account())
    import_seconds = time.monotonic() - started
    assert sorted(result.class_counts) == PBC_CLASSES
    total = sum(sum(v[s] for s in ("train", "val", "test")) for v in result.class_counts.values())
    # Every file of this subset is a good JPEG: all are imported, each exactly once.
    assert total + len(result.report["skipped"]) == sum(1 for _ in pbc128.rglob("*.jpg"))
    assert total > 12_000

    gan_id = start_gan_run("pbc128", {"steps": 30, "batch_size": 32, "g_width": 16, "d_width": 16,
                                      "checkpoint_every": 30, "sample_every": 30}, user=account())
    gan = jobs.wait(gan_id, timeout=600)
    assert gan.status == "succeeded", gan.error
    assert gan.train_set_size == sum(v["train"] for v in result.class_counts.values())

    out = generate_candidates(gan_id, per_class=4)
    assert out["candidates"] == 32
    pending, _ = review_model.queue_page(result.dataset_id, "basophil", "ci")
    review_model.decide([p["id"] for p in pending], "ci", "accept", user=account("reviewer", "ci"))

    baseline = jobs.wait(start_classifier_run("pbc128", "real", {"epochs": 1, "model": "small_cnn"},
                                              user=account()), timeout=600)
    curated = jobs.wait(start_classifier_run("pbc128", "curated", {"epochs": 1, "model": "small_cnn"},
                                             user=account()), timeout=600)
    for run in (baseline, curated):
        assert run.status == "succeeded", run.error
        assert run.result["test"]["accuracy"] > 0.3  # one small epoch on real cells already beats chance (0.125)
    assert curated.train_set_size == baseline.train_set_size + 4
    assert runs_db.get_run(curated.id).result["test_size"] == baseline.result["test_size"]
    with capsys.disabled():
        print(f"\n[realdata] import {import_seconds:.1f} s, GAN {gan.result['sec_per_step']:.3f} s/step at 32 px, "
              f"baseline test macro-F1 {baseline.result['test']['macro_f1']:.3f} after 1 small_cnn epoch")
