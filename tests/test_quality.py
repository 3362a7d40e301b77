"""Quality metrics: unit tests on hand-made point clouds, known answers on tiny synthetic cells, DB scoring, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support import TINY_CLASSES, account, draw_cell, use_settings

from wbc_core.quality import metrics as qm
from wbc_core.quality.evaluate import compute_metrics, score_cells
from wbc_core.quality.judge import QualityConfig, build_reference
from wbc_core.types import LabelledImages

FAST = QualityConfig(judge_epochs=8, judge_batch=32, tstr_epochs=1, device="cpu", num_threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: single-threaded, restored after


def blobs(n: int, dim: int = 8, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) + shift


# -- metrics on point clouds ---------------------------------------------------------------------------


def test_frechet_distance_zero_for_same_set_and_grows_with_shift() -> None:
    a = blobs(500)
    assert qm.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    same = qm.frechet_distance(a, blobs(500, seed=1))
    shifted = qm.frechet_distance(a, blobs(500, shift=2.0, seed=1))
    assert same < 0.5
    assert shifted == pytest.approx(same + 8 * 4.0, rel=0.1)  # |mu difference|^2 = dim * shift^2


def test_frechet_distance_sees_a_wider_spread() -> None:
    a, b = blobs(1000), blobs(1000, seed=1) * 3
    # For isotropic Gaussians FD = dim * (s1 - s2)^2 = 8 * 4 here.
    assert qm.frechet_distance(a, b) == pytest.approx(32.0, rel=0.15)


def test_density_and_coverage_same_vs_shifted() -> None:
    real = blobs(400)
    density, coverage = qm.density_coverage(real, blobs(400, seed=1), k=5)
    assert 0.8 < density < 1.2 and coverage > 0.9
    density, coverage = qm.density_coverage(real, blobs(400, shift=10.0, seed=1), k=5)
    assert density == 0.0 and coverage == 0.0


def test_coverage_drops_when_fakes_collapse_to_one_point() -> None:
    real = blobs(400)
    collapsed = real[:1].repeat(50, 1)
    density, coverage = qm.density_coverage(real, collapsed, k=5)
    assert coverage < 0.05 and density > 0  # every fake sits on a real cell, but covers almost nothing


def test_precision_and_recall_of_a_subset() -> None:
    real = torch.cat([blobs(200), blobs(200, shift=20.0, seed=2)])  # two far-apart modes
    one_mode = blobs(200, seed=3)
    precision, recall = qm.precision_recall(real, one_mode, k=3)
    assert precision > 0.8 and 0.3 < recall < 0.6
    precision, recall = qm.precision_recall(real, blobs(200, shift=-20.0, seed=4), k=3)
    assert precision == 0.0 and recall == 0.0


def test_kmeans_finds_separated_blobs() -> None:
    x = torch.cat([blobs(50, dim=2, shift=s, seed=i) for i, s in enumerate((-20.0, 0.0, 20.0))])
    _, assign = qm.kmeans(x, 3, seed=0)
    groups = [set(assign[i * 50:(i + 1) * 50].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3


def test_mann_whitney_z_known_values() -> None:
    m = n = 10
    top = (m * n - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12)
    assert qm.mann_whitney_z(torch.arange(10.0) + 100, torch.arange(10.0)) == pytest.approx(top)
    assert qm.mann_whitney_z(torch.arange(10.0), torch.arange(10.0) + 100) == pytest.approx(-top)
    assert qm.mann_whitney_z(torch.ones(5), torch.ones(7)) == pytest.approx(0.0)


def test_data_copying_statistic_flags_copies_not_fresh_samples() -> None:
    train, test = blobs(600, dim=4), blobs(300, dim=4, seed=1)
    copies = train[:300] + 1e-3 * blobs(300, dim=4, seed=2)
    fresh = blobs(300, dim=4, seed=3)
    assert qm.data_copying_ct(train, test, copies, cells=5) < -5
    assert abs(qm.data_copying_ct(train, test, fresh, cells=5)) < 3


def test_memorisation_threshold_is_per_class_where_a_class_has_enough_val_cells() -> None:
    from wbc_core.quality.neighbours import MIN_VAL_PER_CLASS_THRESHOLD, class_memorisation_thresholds

    # Class 0 is tight (like platelets: real cells sit close to train cells), class 1 is spread out, class 2 has
    # too few val cells for its own percentile.
    train = torch.cat([blobs(400, shift=0.0) * 0.1, blobs(400, shift=50.0, seed=1) * 2.0])
    n_tight = MIN_VAL_PER_CLASS_THRESHOLD  # just enough for its own percentile; a small share of all val cells
    val = torch.cat([blobs(n_tight, seed=2) * 0.1, blobs(400, shift=50.0, seed=3) * 2.0,
                     blobs(5, shift=50.0, seed=4)])
    val_labels = torch.tensor([0] * n_tight + [1] * 400 + [2] * 5)
    overall, per_class = class_memorisation_thresholds(val, val_labels, train, num_classes=4, percentile=1.0)
    assert per_class[0] < overall < per_class[1]
    assert per_class[2] == overall and per_class[3] == overall  # < MIN_VAL_PER_CLASS_THRESHOLD val cells
    tight_val_d = torch.cdist(val[:n_tight], train).min(1).values
    # The global 1st percentile is made of tight-class cells only, so it flags several times 1% of their real
    # held-out cells as copies (9% of real platelets on PBC); the class's own percentile flags about 1%.
    assert float((tight_val_d < overall).float().mean()) >= 0.06
    assert float((tight_val_d < per_class[0]).float().mean()) <= 0.02


def cells(n_per_class: int, seed: int) -> LabelledImages:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c, colour in enumerate(TINY_CLASSES.values()):
        for _ in range(n_per_class):
            images.append(np.asarray(draw_cell(rng, 32, colour)).transpose(2, 0, 1))
            labels.append(c)
    return LabelledImages(torch.from_numpy(np.stack(images)), torch.tensor(labels))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    train = cells(40, seed=0)
    ids = torch.arange(1000, 1000 + len(train))
    return build_reference(train, cells(40, seed=1), list(TINY_CLASSES), tmp_path_factory.mktemp("judge"), FAST,
                           train_ids=ids), train


def test_held_out_real_cells_score_like_real_cells(reference) -> None:
    ref, _ = reference
    held = cells(40, seed=2)
    m = compute_metrics(ref, held.images, held.labels, FAST)
    assert 0.6 < m["quality/density"] < 1.6
    assert m["quality/coverage"] > 0.7
    assert 0.3 < m["quality/fd_ratio"] < 3.0
    assert m["quality/memorised"] < 0.1
    print({k: round(v, 3) for k, v in m.items() if k.count("/") == 1})
    assert m["quality/judge_accuracy"] > 0.8 and m["quality/tstr_accuracy"] > 0.6
    assert m["quality/acceptance"] > 0.4  # a 8-epoch judge on 120 cells is not very confident
    assert {f"quality/coverage/{c}" for c in TINY_CLASSES} <= set(m)


def test_real_acceptance_is_the_judge_on_the_real_val_cells(reference) -> None:
    ref, _ = reference
    m = compute_metrics(ref, ref.val_images, ref.val_labels, QualityConfig(tstr_epochs=0, num_threads=1))
    # Scoring the val cells themselves as "generated" must give exactly the real ceiling, overall and per class.
    assert m["quality/real_acceptance"] == pytest.approx(m["quality/acceptance"])
    for c in TINY_CLASSES:
        assert m[f"quality/real_acceptance/{c}"] == pytest.approx(m[f"quality/acceptance/{c}"])
    other = cells(10, seed=5)
    m2 = compute_metrics(ref, other.images, other.labels, QualityConfig(tstr_epochs=0, num_threads=1))
    assert m2["quality/real_acceptance"] == pytest.approx(m["quality/real_acceptance"])  # a property of the judge


def test_acceptance_metrics_are_compute_metrics_verdicts_alone(reference) -> None:
    from wbc_core.quality.evaluate import acceptance_metrics

    ref, _ = reference
    held = cells(10, seed=6)
    full = compute_metrics(ref, held.images, held.labels, QualityConfig(tstr_epochs=0, num_threads=1))
    verdicts = acceptance_metrics(ref, held.images, held.labels)
    names = {"acceptance", "judge_accuracy", "real_acceptance"}
    assert verdicts == {k: v for k, v in full.items() if k.split("/")[1] in names}
    assert {f"quality/acceptance/{c}" for c in TINY_CLASSES} <= verdicts.keys()


def test_copies_of_train_cells_are_memorised(reference) -> None:
    ref, train = reference
    m = compute_metrics(ref, train.images, train.labels, QualityConfig(tstr_epochs=0, num_threads=1))
    assert m["quality/memorised"] == 1.0
    assert m["quality/copy_ct"] < -3
    scores = score_cells(ref, train.images[:5], train.labels[:5])
    assert scores.nearest_id.tolist() == list(range(1000, 1005))
    assert scores.memorised.all()


def test_off_class_cells_are_not_accepted(reference) -> None:
    ref, _ = reference
    held = cells(20, seed=3)
    wrong = (held.labels + 1) % 3  # every cell labelled as another class
    m = compute_metrics(ref, held.images, wrong, QualityConfig(tstr_epochs=0, num_threads=1))
    assert m["quality/acceptance"] < 0.2 and m["quality/judge_accuracy"] < 0.2


def test_judge_is_cached_not_retrained(reference) -> None:
    ref, train = reference
    stamp = (ref.judge_dir / "model.pt").stat().st_mtime_ns
    again = build_reference(train, cells(40, seed=1), list(TINY_CLASSES), ref.judge_dir, FAST,
                            train_ids=ref.train_ids)
    assert (ref.judge_dir / "model.pt").stat().st_mtime_ns == stamp
    assert torch.equal(again.train_features, ref.train_features)


# -- database scoring and CLI ---------------------------------------------------------------------------


@pytest.fixture()
def dataset_with_gan(wbc_home: Path, tmp_path: Path):
    """Dataset 'cells' (3 classes x 30 at 32 px) and a finished 4-step GAN run, trained in this process."""
    from db import runs as runs_db
    from wbc_core import gan_runs, importing, worker

    folder = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for name, colour in TINY_CLASSES.items():
        (folder / name).mkdir(parents=True)
        for i in range(30):
            draw_cell(rng, 32, colour).save(folder / name / f"{i:02d}.png")
    importing.import_folder(folder, "cells", size=32, user=account())
    run_id = gan_runs.start_gan_run("cells", {"steps": 4, "batch_size": 8, "g_width": 8, "d_width": 8,
                                              "checkpoint_every": 2, "num_threads": 1, "device": "cpu"},
                                    launch=False, user=account())
    assert worker.main(run_id) == 0
    assert runs_db.get_run(run_id).status == "succeeded"
    return run_id, folder


def test_generate_scores_candidates_and_quality_is_stored_per_checkpoint(dataset_with_gan) -> None:
    from db import datasets as ds_db
    from db import runs as runs_db
    from db.engine import read_session
    from db.models import Image
    from wbc_core import gan_runs

    run_id, _ = dataset_with_gan
    out = gan_runs.generate_candidates(run_id, per_class=3)
    assert out["scoring"]["scored"] == 9
    ids = {r.id for r in ds_db.candidates(ds_db.get_dataset("cells").id)}
    train_ids = {r.id for r in ds_db.real_images(ds_db.get_dataset("cells").id, split="train")}
    with read_session() as s:
        rows = s.query(Image).filter(Image.id.in_(ids)).all()
        assert all(0 <= r.judge_prob <= 1 and r.judge_top_class in TINY_CLASSES for r in rows)
        assert all(r.nearest_real_id in train_ids and r.nearest_real_distance >= 0 for r in rows)
        assert all(r.memorised is not None for r in rows)
    stored = gan_runs.measure_checkpoint(run_id, step=2, per_class=8)
    assert stored["step"] == 2
    names = {r["name"] for r in runs_db.metrics([run_id]) if r["step"] == 2}
    assert {"quality/fd_ratio", "quality/coverage", "quality/memorised", "quality/acceptance"} <= names
    assert "quality/acceptance/platelet" in names  # per-class coverage needs > 5 val cells; this set has ~4


def test_cli_quality_on_a_folder_prints_json(dataset_with_gan, capsys) -> None:
    from wbc_core import quality_views
    from wbc_core.cli.main import main

    _, folder = dataset_with_gan
    assert main(["--json", "quality", "--dataset", "cells", "--images", str(folder)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["cells"] == 90
    # The folder holds the train cells themselves, so most of them are flagged as copies.
    assert out["metrics"]["quality/memorised"] > 0.5
    assert out["verdict"] == quality_views.verdict(out["metrics"]) and "look like copies" in out["verdict"]
    err = captured.err
    assert "quality 0/5" in err and "quality 5/5" in err and "judge features of 90 cells" in err  # progress
    assert main(["quality", "--dataset", "cells", "--images", str(folder)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[-1].startswith("verdict: ")
    assert main(["--json", "quality", "--run", "999"]) == 2


def test_gan_job_measures_quality_at_each_checkpoint_when_asked(wbc_home: Path, tmp_path: Path) -> None:
    from db import runs as runs_db
    from wbc_core import gan_runs, importing, worker

    folder = tmp_path / "folder"
    rng = np.random.default_rng(1)
    for name, colour in TINY_CLASSES.items():
        (folder / name).mkdir(parents=True)
        for i in range(20):
            draw_cell(rng, 32, colour).save(folder / name / f"{i:02d}.png")
    importing.import_folder(folder, "hooked", size=32, user=account())
    run_id = gan_runs.start_gan_run("hooked", {"steps": 4, "batch_size": 8, "g_width": 8, "d_width": 8,
                                               "checkpoint_every": 2, "num_threads": 1, "device": "cpu",
                                               "quality_every_checkpoint": True, "quality_per_class": 4},
                                    launch=False, user=account())
    assert worker.main(run_id) == 0
    steps = {r["step"] for r in runs_db.metrics([run_id], names=["quality/acceptance"])}
    assert steps == {2, 4}
    # The explicit rescoring command fills the candidates' columns too.
    gan_runs.generate_candidates(run_id, per_class=2, score=False)
    assert gan_runs.score_candidates("hooked", run_id)["scored"] == 6


def test_cap_per_class_keeps_at_most_n_of_each_class() -> None:
    from wbc_core.quality.judge import cap_per_class

    data = cells(5, seed=4)
    capped = cap_per_class(data, 2)
    assert torch.bincount(capped.labels).tolist() == [2, 2, 2]
    assert len(cap_per_class(data, 99)) == len(data)


def test_full_judge_is_chosen_by_the_environment_and_cached_apart(dataset_with_gan, monkeypatch) -> None:
    from db import datasets as ds_db
    from wbc_core.cell_detail import _judge_dir
    from wbc_core.context import Settings
    from wbc_core.judges import dataset_reference
    from wbc_core.quality.judge import JUDGE_ENV, QualityError, app_quality_config

    assert Settings.from_environ({JUDGE_ENV: "full"}, home=".").quality_judge == "full"  # read from the environment
    with use_settings(quality_judge="full"):
        full = app_quality_config()
        assert (full.judge_model, full.judge_max_per_class) == ("resnet18", 100_000)
        ref = dataset_reference("cells")  # no config: the app's choice, as every app caller does it
        assert ref.judge.config.model == "resnet18" and ref.judge_dir.name.endswith(full.key())
        folder, _ = _judge_dir(ds_db.get_dataset("cells").id)  # review's detail panel finds the same judge
        assert folder == ref.judge_dir
    assert app_quality_config() == QualityConfig()  # the default is the small judge, cached under its own key
    assert app_quality_config().key() != full.key()
    assert _judge_dir(ds_db.get_dataset("cells").id) is None  # the small judge was never trained here
    with use_settings(quality_judge="huge"), pytest.raises(
            QualityError, match="WBC_QUALITY_JUDGE must be one of small, full, got 'huge'"):
        app_quality_config()
