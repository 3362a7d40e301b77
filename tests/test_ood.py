"""Out of distribution (wbc_core.ood): a classifier's far-from-training score calibrated on its real val cells,
abstain in predict, the evaluate job, and the import's comparison with a reference dataset.

Fixtures: "lab A" (cell-like demo drawings, 5 classes at 32 px) with a tiny trained small_cnn; "lab A2" (the
same drawing process, another seed: the same lab); "lab B" (lab A2 with a hue rotation and more contrast:
another stain); "disks" (plain coloured discs from tests/support.py: something else altogether).
"""

from __future__ import annotations

import colorsys
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import account, draw_cell, module_home, use_settings

from db import datasets as ds_db
from db import runs as runs_db
from db.vocabulary import JOB_KINDS
from wbc_core import import_jobs, importing, jobs, ood, results, store, worker
from wbc_core.cli import main as cli
from wbc_core.jobs import groups
from wbc_core.jobs.kinds import KINDS

SIZE = 32
TRAIN = {"model": "small_cnn", "epochs": 6, "batch_size": 16, "num_threads": 1, "device": "cpu",
         "schedule": "cosine"}


def _shift_stain(image: Image.Image, hue: float = 0.3, contrast: float = 1.6) -> Image.Image:
    """Another stain: rotate the hue and stretch the contrast around mid-grey."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    flat = rgb.reshape(-1, 3)
    out = np.array([colorsys.hsv_to_rgb((h + hue) % 1.0, s, v) for h, s, v in
                    (colorsys.rgb_to_hsv(*px) for px in flat)]).reshape(rgb.shape)
    out = np.clip((out - 0.5) * contrast + 0.5, 0, 1)
    return Image.fromarray((out * 255).astype(np.uint8), "RGB")


def _shifted_folder(source: Path, dest: Path) -> Path:
    for path in source.glob("*/*.png"):
        target = dest / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            _shift_stain(im).save(target)
    return dest


def _disks_folder(dest: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(3)
    colours = {"lymphocyte": (120, 60, 160), "neutrophil": (200, 120, 170), "monocyte": (90, 40, 110)}
    for name, colour in colours.items():
        (dest / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_cell(rng, SIZE, colour).save(dest / name / f"{name}_{i}.png")
    return dest


def _run_in_process(run_id: int) -> runs_db.RunInfo:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert worker.main(run_id) == 0, runs_db.get_run(run_id).error
    finally:
        signal.signal(signal.SIGTERM, previous)
    return runs_db.get_run(run_id)


def _images(dataset: str, split: str | None = None):  # noqa: ANN202 - uint8 tensor
    info = ds_db.get_dataset(dataset)
    return store.images_for(info.id, ds_db.real_images(info.id, split=split), SIZE)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from db.migrate import ensure_schema
    from wbc_core.data.demo import write_demo_folder

    root = tmp_path_factory.mktemp("ood")
    with module_home(root / "home"):
        ensure_schema()
        lab_a = write_demo_folder(root / "lab_a", per_class=40, size=SIZE, seed=1)
        lab_a2 = write_demo_folder(root / "lab_a2", per_class=12, size=SIZE, seed=2)
        for note in [*lab_a.glob("*.txt"), *lab_a2.glob("*.txt")]:
            note.unlink()
        folders = {"labA": lab_a, "labA2": lab_a2, "labB": _shifted_folder(lab_a2, root / "lab_b"),
                   "disks": _disks_folder(root / "disks")}
        importing.import_folder(lab_a, "labA", size=SIZE, user=account())
        launched = groups.start_seeds("labA", "real", [0], TRAIN, launch=False, user=account())
        run = _run_in_process(launched.run_ids[0])
        assert run.status == "succeeded", run.error
        yield {"root": root, "run_id": run.id, "folders": folders}


# -- the fit itself --------------------------------------------------------------------------------------------


def test_fit_flags_about_five_percent_of_held_out_cells_and_points_far_from_every_class():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 16))
    labels = rng.integers(0, 3, 600)
    train = centres[labels] + rng.normal(0, 1, (600, 16))
    val = centres[rng.integers(0, 3, 400)] + rng.normal(0, 1, (400, 16))
    cal = ood.fit_calibration(train, labels, val, ["a", "b", "c"])
    assert (cal.scores(val) > cal.threshold).mean() == pytest.approx(0.05, abs=0.01)
    fresh = centres[rng.integers(0, 3, 400)] + rng.normal(0, 1, (400, 16))
    assert (cal.scores(fresh) > cal.threshold).mean() < 0.12
    far = rng.normal(0, 1, (100, 16)) + 20.0  # off every class mean
    assert (cal.scores(far) > cal.threshold).all()
    assert cal.percentile_of(cal.scores(far)).min() == 1.0


def test_fit_stays_finite_with_fewer_cells_than_dimensions(tmp_path):
    rng = np.random.default_rng(1)
    train, labels = rng.normal(0, 1, (10, 64)), np.array([0, 1] * 5)
    cal = ood.fit_calibration(train, labels, rng.normal(0, 1, (6, 64)), ["a", "b"], model_sha256="x")
    assert np.isfinite(cal.scores(rng.normal(0, 1, (4, 64)))).all() and cal.threshold > 0
    cal.save(tmp_path / "c.npz")
    again = ood.Calibration.load(tmp_path / "c.npz")
    assert again.describe() == cal.describe()
    np.testing.assert_allclose(again.scores(train), cal.scores(train))


def test_evaluate_is_a_registered_job_kind():
    assert "evaluate" in JOB_KINDS and KINDS["evaluate"].load() is ood.run_evaluate_job


# -- per image, for a trained classifier --------------------------------------------------------------------------


def test_in_distribution_cells_are_mostly_not_far_and_shifted_or_foreign_cells_mostly_are(built):
    from wbc_core.classifier import load_classifier

    loaded = load_classifier(results.checkpoint_path(built["run_id"]))
    cal = ood.run_calibration(built["run_id"], loaded)
    for name in ("labA2", "labB", "disks"):
        if not any(d.name == name for d in ds_db.list_datasets()):
            importing.import_folder(built["folders"][name], name, size=SIZE, user=account())
    share = {f"{name} {split or 'all'}": float(ood.score_images(loaded, _images(name, split), cal)["far"].mean())
             for name, split in (("labA", "val"), ("labA", "test"), ("labA2", None), ("labB", None),
                                 ("disks", None))}
    print(share)
    assert share["labA val"] <= 0.1, share  # the threshold is their 95th percentile
    assert share["labA test"] <= 0.3 and share["labA2 all"] <= 0.3, share
    assert share["labB all"] >= 0.7, share
    assert share["disks all"] >= 0.9, share


def test_the_calibration_is_stored_next_to_the_model_and_refitted_when_the_model_changes(built):
    checkpoint = results.checkpoint_path(built["run_id"])
    first = ood.run_calibration(built["run_id"])
    path = checkpoint.with_name(ood.OOD_FILE)
    assert path.is_file() and ood.Calibration.load(path).model_sha256 == first.model_sha256
    stamp = path.stat().st_mtime_ns
    assert ood.run_calibration(built["run_id"]).threshold == first.threshold
    assert path.stat().st_mtime_ns == stamp  # read back, not fitted again
    stale = ood.Calibration(first.whitening, first.means, first.class_names, first.threshold, first.val_scores,
                            "another model", first.fit_cells)
    stale.save(path)
    assert ood.run_calibration(built["run_id"]).model_sha256 == first.model_sha256
    assert ood.Calibration.load(path).model_sha256 == first.model_sha256


def _png_paths(folder: Path, n: int) -> list[str]:
    return [str(p) for p in sorted(folder.glob("*/*.png"))[:n]]


def test_predict_flags_far_images_and_abstains_above_the_threshold(built, capsys):
    checkpoint = str(results.checkpoint_path(built["run_id"]))
    same = _png_paths(built["folders"]["labA2"], 60)[::6]
    other = _png_paths(built["folders"]["disks"], 24)[::3]
    assert cli.main(["--json", "predict", "--model", checkpoint, "--abstain-above", "1", *same, *other]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["abstain_above"] == 1.0 and out["ood"]["method"] == "mahalanobis"
    for p in out["predictions"]:
        assert {"ood_score", "ood_ratio", "ood_val_percentile", "far", "prediction", "abstained"} <= set(p)
        assert p["abstained"] == (p["ood_ratio"] > 1.0) == p["far"]
        assert p["prediction"] == ("abstain" if p["abstained"] else p["top_class"])
    by_image = {p["image"]: p for p in out["predictions"]}
    assert sum(by_image[i]["abstained"] for i in other) == len(other)
    assert sum(by_image[i]["abstained"] for i in same) <= len(same) // 3
    # Without a threshold nothing abstains, but the far flag stays.
    plain = results.predict_images(checkpoint, other)
    assert all(p["far"] and not p["abstained"] and p["prediction"] == p["top_class"] for p in plain["predictions"])
    assert cli.main(["predict", "--model", checkpoint, *other[:2]]) == 0
    text = capsys.readouterr().out
    assert "FAR from the training cells" in text and "2 of 2 images far" in text


def test_exported_checkpoint_carries_its_calibration_and_other_formats_say_why_not(built, tmp_path, capsys):
    run_id = built["run_id"]
    files = results.export_model(run_id, tmp_path / "export")
    assert Path(files["ood"]).is_file()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for kind in ("checkpoint", "ood", "torchscript"):
        target = moved / Path(files[kind]).name
        target.write_bytes(Path(files[kind]).read_bytes())
    images = _png_paths(built["folders"]["disks"], 3)
    out = results.predict_images(moved / f"run_{run_id}_model.pt", images, abstain_above=2.0)
    assert out["ood"] is not None and all("ood_ratio" in p for p in out["predictions"])
    (moved / f"run_{run_id}_ood.npz").unlink()
    bare = results.predict_images(moved / f"run_{run_id}_model.pt", images)
    assert bare["ood"] is None and "export-model" in bare["ood_note"]
    script = moved / f"run_{run_id}_model.torchscript.pt"
    assert results.predict_images(script, images)["ood"] is None
    assert cli.main(["--json", "predict", "--model", str(script), "--abstain-above", "1", *images]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert "cannot abstain" in error and "checkpoint (model.pt)" in error
    with pytest.raises(ValueError, match="positive number"):
        results.predict_images(results.checkpoint_path(run_id), images, abstain_above=-1)


# -- the evaluate job ---------------------------------------------------------------------------------------------


def test_evaluate_job_reports_per_class_scores_and_the_far_share(built):
    for name in ("labA2", "labB"):
        if not any(d.name == name for d in ds_db.list_datasets()):
            importing.import_folder(built["folders"][name], name, size=SIZE, user=account())
    same = _run_in_process(ood.start_evaluation(built["run_id"], "labA2", user=account("viewer"), launch=False))
    assert same.status == "succeeded", same.error
    r = same.result
    assert r["cells"] == 60 and r["known_cells"] == 60 and r["which"] == "all its real cells"
    assert {row["class"] for row in r["per_class"]} == set(ds_db.get_dataset("labA").class_names)
    assert all({"precision", "recall", "f1", "far_share", "cells"} <= set(row) for row in r["per_class"])
    assert r["far_share"] <= 0.3 and not any("far from the cells" in w for w in r["warnings"])
    own = _run_in_process(ood.start_evaluation(built["run_id"], "labA", abstain_above=1.0, user=account(),
                                               launch=False)).result
    assert own["which"].startswith("its real test cells") and own["cells"] == 30
    assert own["abstained"] == round((1 - own["coverage"]) * own["cells"])
    with pytest.raises(ValueError, match="not a finished classifier run"):
        ood.start_evaluation(same.id, "labB", user=account())


def test_evaluate_command_runs_the_job_in_its_own_process(built, capsys):
    if not any(d.name == "labB" for d in ds_db.list_datasets()):
        importing.import_folder(built["folders"]["labB"], "labB", size=SIZE, user=account())
    account()
    code = cli.main(["--json", "--as", "admin", "evaluate", "--run", str(built["run_id"]), "--dataset", "labB",
                     "--abstain-above", "1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    info = runs_db.get_run(out["job_id"])
    assert info.kind == "evaluate" and info.status == "succeeded" and info.pid is not None
    assert out["far_share"] >= 0.7 and out["abstained"] >= 0.7 * out["cells"]
    assert any("another lab or stain" in w for w in out["warnings"])
    assert {"accuracy", "macro_f1", "per_class", "coverage", "answered_macro_f1", "calibration"} <= set(out)
    assert "far from the training cells" in ood.evaluation_text(out)


# -- at import ------------------------------------------------------------------------------------------------


def _import_job(folder: Path, name: str, reference: str | None = None) -> runs_db.RunInfo:
    run_id = import_jobs.start_import("folder", name, folder=str(folder), size=SIZE, user=account(),
                                      restrict_to_roots=False, launch=False, reference=reference)
    return _run_in_process(run_id)


def test_import_warns_when_the_cells_look_like_another_stain_and_not_for_the_same_lab(built):
    same = _import_job(built["folders"]["labA2"], "import-same")  # default reference: labA, the biggest
    assert same.status == "succeeded", same.error
    shift = same.result["distribution"]
    assert shift["checked"] and shift["reference"] == "labA", shift
    assert not shift["looks_different"] and "look unlike" not in same.result["warning"], shift
    other = _import_job(built["folders"]["labB"], "import-stain", reference="labA")
    assert other.status == "succeeded", other.error
    shift = other.result["distribution"]
    assert shift["looks_different"] and shift["share_far"] >= 0.5, shift
    assert other.result["warning"].startswith("These cells look unlike labA: different lab or stain?")
    assert "Predictions from models trained on labA may be unreliable." in other.result["warning"]


def test_import_without_a_reference_says_so_and_an_unknown_reference_is_refused(wbc_home, tmp_path):
    info = _import_job(_disks_folder(tmp_path / "disks"), "alone")
    assert info.status == "succeeded", info.error
    assert info.result["distribution"] == {"checked": False, "reference": None,
                                           "message": "no other real dataset to compare the cells with"}
    assert info.result["warning"] == ""
    with pytest.raises(ds_db.DatasetNotFound):
        import_jobs.start_import("folder", "x", folder=str(tmp_path), user=account(), restrict_to_roots=False,
                                 launch=False, reference="nope")


# -- the Dashboard panel ------------------------------------------------------------------------------------------


def test_dashboard_panel_queues_an_evaluation_and_shows_its_result(built):
    if not any(d.name == "labB" for d in ds_db.list_datasets()):
        importing.import_folder(built["folders"]["labB"], "labB", size=SIZE, user=account())
    with use_settings(auth_off=True, local_user="admin"):
        _drive_the_panel(built)


def _drive_the_panel(built: dict) -> None:
    from streamlit.testing.v1 import AppTest

    from pages.ui import frame

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "dashboard.py"),
                           default_timeout=60)
    at.session_state[frame.DATASET_KEY] = "labA"
    at.run()
    assert not at.exception, at.exception
    assert "Evaluate a model on another dataset" in [s.value for s in at.subheader], \
        [e.value for e in [*at.title, *at.info, *at.warning, *at.error, *at.markdown]]
    next(s for s in at.selectbox if s.label == "Dataset to evaluate on").select("labB")
    before = {r.id for r in runs_db.list_runs(kind="evaluate")}
    next(b for b in at.button if b.label == "Evaluate").click().run()
    assert not at.exception, at.exception
    (queued,) = [r for r in runs_db.list_runs(kind="evaluate") if r.id not in before]
    assert queued.config["target_name"] == "labB" and queued.config["classifier_run_id"] == built["run_id"]
    if runs_db.get_run(queued.id).active:  # the page launched a worker: let it finish, then redraw
        jobs.wait(queued.id, timeout=120)
    assert runs_db.get_run(queued.id).status == "succeeded", runs_db.get_run(queued.id).error
    at.run()
    assert not at.exception, at.exception
    assert any(m.label == "Flagged out-of-distribution" and m.value == "100%" for m in at.metric), \
        [(m.label, m.value) for m in at.metric]
    assert any("another lab or stain" in w.value for w in at.warning)


def test_the_import_command_compares_too_and_refuses_an_unknown_reference(built, capsys):
    account()
    code = cli.main(["--json", "--as", "admin", "import", str(built["folders"]["labB"]), "--name", "cli-stain",
                     "--size", str(SIZE), "--reference", "labA"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["distribution"]["looks_different"] and out["distribution"]["reference"] == "labA"
    assert cli.main(["--as", "admin", "import", str(built["folders"]["labB"]), "--name", "cli-nope",
                     "--size", str(SIZE), "--reference", "no such dataset"]) == 2
    assert not any(d.name == "cli-nope" for d in ds_db.list_datasets())
