"""GAN fine-tuning with the acceptance model as a reward (wbc_core.gan_finetune): start checks, the differentiable
reward, the job end to end through the GAN job body, steered candidates, the CLI and the Generate page's expander.

The judge is a tiny stand-in (a WBCClassifier whose features are the mean colour, red = class a, blue = class b), so
the acceptance model, the reward and a 4-step GAN on 32 px two-colour cells all run in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from support import account, active_home, copy_home, draw_cell, drawn_candidates, module_home

from db import acceptance as acc_db
from db import datasets as ds_db
from db import runs as runs_db
from wbc_core import gan_finetune
from wbc_core.context import current

ROOT = Path(__file__).resolve().parent.parent
RED, BLUE = (200, 40, 40), (40, 40, 200)
CLASSES = ["a", "b"]  # a wants red cells, b blue ones
TINY_GAN = {"steps": 4, "batch_size": 8, "g_width": 8, "d_width": 8, "z_dim": 16, "checkpoint_every": 2,
            "device": "cpu", "num_threads": 1, "amp": False, "ema_start": 0}  # EMA weights differ from the live ones

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_judge():  # noqa: ANN201 - a WBCClassifier
    """Features = mean colour (0..1); its head calls red cells class a and blue ones class b."""
    import torch
    from torch import nn

    from wbc_core.classifier.models import WBCClassifier

    head = nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[4.0, 0.0, -4.0], [-4.0, 0.0, 4.0]]))
        head.bias.zero_()
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return WBCClassifier(net, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 2, 32).eval()


def cells(colour: tuple[int, int, int], n: int, seed: int):  # noqa: ANN201 - uint8 [n,3,32,32]
    import torch

    rng = np.random.default_rng(seed)
    return torch.stack([torch.from_numpy(np.array(draw_cell(rng, 32, colour))).permute(2, 0, 1) for _ in range(n)])


def fake_reference():  # noqa: ANN201 - what wbc_core.feedback and gan_runs read of a judge Reference
    import torch

    from wbc_core.classifier.models import extract_features

    judge = tiny_judge()
    train = torch.cat([cells(RED, 4, 1), cells(BLUE, 4, 2)])
    return SimpleNamespace(judge=SimpleNamespace(model=judge, class_names=list(CLASSES)), class_names=list(CLASSES),
                           image_size=32, train_features=extract_features(judge, train),
                           train_ids=torch.full((8,), -1, dtype=torch.int64),
                           thresholds_for=lambda labels: torch.zeros(labels.shape))


def fitted_blob(ref):  # noqa: ANN001, ANN201 - an acceptance model as feedback.train_model saves it
    """Class a accepts red and rejects blue cells, class b the other way round (fitted on the real feature path)."""
    import torch

    from wbc_core import feedback

    images = torch.cat([cells(RED, 10, 3), cells(BLUE, 10, 4)])
    feats, probs, nearest = feedback.cell_features(ref, images)
    x = np.vstack([feedback.design_matrix(feats, probs, nearest, [c] * 20, 2) for c in (0, 1)])
    y = np.array([1] * 10 + [0] * 10 + [0] * 10 + [1] * 10)
    return {"pipeline": feedback._pipeline().fit(x, y), "class_names": list(CLASSES), "image_size": 32,
            "feature_spec": {"judge_features": 3}}


# -- the reward, without a database ----------------------------------------------------------------------------

def test_reward_logit_is_the_stored_models_decision_function():
    import torch

    from wbc_core import feedback

    ref = fake_reference()
    blob = fitted_blob(ref)
    reward = gan_finetune.build_reward(ref.judge.model, CLASSES, ref.train_features, blob, CLASSES, 32)
    images = torch.cat([cells(RED, 3, 5), cells(BLUE, 3, 6)])
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    feats, probs, nearest = feedback.cell_features(ref, images)
    expected = blob["pipeline"].decision_function(feedback.design_matrix(feats, probs, nearest, y.tolist(), 2))
    got = reward.logits(images.float() / 127.5 - 1.0, y).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert got[0] > 0 > got[1]  # a red cell offered as a: accepted; a red cell offered as b: not


def test_reward_gradient_reaches_the_generator_and_raises_predicted_acceptance():
    import torch

    from wbc_core.gan import GanConfig, build_networks

    ref = fake_reference()
    reward = gan_finetune.build_reward(ref.judge.model, CLASSES, ref.train_features, fitted_blob(ref), CLASSES, 32)
    torch.manual_seed(0)
    g, _ = build_networks(GanConfig(image_size=32, g_width=8, d_width=8, z_dim=16), 2)
    z, y = torch.randn(16, 16), torch.tensor([0, 1] * 8)

    def p_accept() -> float:
        with torch.no_grad():
            return float(torch.sigmoid(reward.logits(g(z, y), y)).mean())

    before = p_accept()
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    for i in range(15):
        opt.zero_grad()
        reward(g(z, y), y).backward()
        if i == 0:
            grads = [p.grad for p in g.parameters() if p.requires_grad]
            assert all(gr is not None for gr in grads) and sum(float(gr.abs().sum()) for gr in grads) > 0
            assert all(p.grad is None for p in reward.parameters()), "the judge stays frozen"
        opt.step()
    after = p_accept()
    assert after > before + 0.2, (before, after)
    assert set(reward.take_metrics()) == {"reward_p_accept"} and reward.take_metrics() == {}


def test_the_anchor_starts_at_zero_and_holds_the_generator_near_its_parent():
    import copy

    import torch

    from wbc_core.gan import GanConfig, build_networks

    ref = fake_reference()
    torch.manual_seed(0)
    g, _ = build_networks(GanConfig(image_size=32, g_width=8, d_width=8, z_dim=16), 2)
    parent = copy.deepcopy(g).requires_grad_(False)  # train mode, as gan_finetune.parent_generator leaves it
    z, y = torch.randn(16, 16), torch.tensor([0, 1] * 8)

    def tune(anchor_weight: float) -> tuple[float, float]:
        """(anchor distance at the first step, after 15 steps) of a fine-tune from the parent's weights."""
        live = copy.deepcopy(parent).requires_grad_(True)
        reward = gan_finetune.build_reward(ref.judge.model, CLASSES, ref.train_features, fitted_blob(ref), CLASSES,
                                           32, parent=parent)
        opt = torch.optim.Adam(live.parameters(), lr=1e-2)
        first = None
        for _ in range(15):
            opt.zero_grad()
            reward.loss(live(z, y), y, z, 1.0, anchor_weight).backward()
            first = reward.take_metrics()["anchor_distance"] if first is None else first
            opt.step()
        with torch.no_grad():
            return first, float(reward.anchor(reward.features(live(z, y)), y, z))

    free_first, free = tune(0.0)
    held_first, held = tune(50.0)
    assert held_first == pytest.approx(0.0, abs=1e-9), "the live generator starts as its parent"
    assert free > 0 and held < 0.5 * free, (held, free)
    no_parent = gan_finetune.build_reward(ref.judge.model, CLASSES, ref.train_features, fitted_blob(ref), CLASSES, 32)
    with pytest.raises(gan_finetune.FinetuneError, match="needs the parent"):
        no_parent.loss(parent(z, y), y, z, 1.0, 1.0)


# -- starting a fine-tune ---------------------------------------------------------------------------------------

@pytest.fixture()
def gan_row(wbc_home):
    """Dataset "d" (a, b; 32 px, 4 train cells each) and a finished GAN run row with a checkpoint row at step 4 (the
    checkpoint file is not read when a fine-tune is recorded). Returns the run id."""
    from wbc_core.gan import GanConfig

    real = [dict(origin="real", class_name=c, split="train", sha256=f"r{c}{i}", path=f"real/{c}{i}.png", width=32,
                 height=32) for c in CLASSES for i in range(4)]
    dataset_id = ds_db.create_dataset("d", "real", "src", CLASSES, {}, "h", {}, real, image_size=32)
    config = GanConfig.from_dict({**TINY_GAN, "image_size": 32}).to_dict()
    run_id = runs_db.create_run("gan", dataset_id, config, seed=0, split_hash="h", started_by="someone")
    runs_db.set_training_set(run_id, "digest", 8, {})
    for step in (2, 4):
        runs_db.add_checkpoint(run_id, step, f"runs/run_{run_id:05d}/checkpoints/step_{step:06d}.pt", "")
    runs_db.finish_run(run_id, "succeeded", result={})
    return run_id


def _add_model(dataset_name: str = "d") -> dict:
    return acc_db.add_model(ds_db.get_dataset(dataset_name).id, trained_on=12, cv_auc=0.8, calibration={},
                            summary={}, path="cache/acceptance/model.joblib")


def test_a_reviewer_may_not_fine_tune(gan_row):
    with pytest.raises(PermissionError, match="may not train"):
        gan_finetune.start_finetune(gan_row, 10, 1.0, user=account("reviewer", "rita"), launch=False)


def test_without_an_acceptance_model_it_says_to_train_one_first(gan_row):
    with pytest.raises(ValueError, match="train the acceptance model first") as err:
        gan_finetune.start_finetune(gan_row, 10, 1.0, user=account(), launch=False)
    assert "python -m wbc_core feedback train --dataset d" in str(err.value) and "Review page" in str(err.value)


@pytest.mark.parametrize(("steps", "weight", "words"), [
    (0, 1.0, "fine-tuning steps must be a whole number from 1 to 100,000, got 0"),
    (-5, 1.0, "fine-tuning steps must be"), (10**9, 1.0, "fine-tuning steps must be"),
    (float("nan"), 1.0, "fine-tuning steps must be"), (10, float("nan"), "acceptance reward weight must be"),
    (10, 0.0, "acceptance reward weight must be a number above 0"), (10, -1.0, "acceptance reward weight must be"),
    (10, 1e9, "acceptance reward weight must be"), (10, float("inf"), "acceptance reward weight must be"),
])
def test_bad_numbers_are_refused_in_plain_words(gan_row, steps, weight, words):
    _add_model()
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        gan_finetune.start_finetune(gan_row, steps, weight, user=account(), launch=False)
    assert [r.id for r in runs_db.list_runs(kind="gan")] == [gan_row], "nothing was recorded"


@pytest.mark.parametrize("anchor", [float("nan"), -0.5, 1e6, float("inf")])
def test_bad_anchor_weights_are_refused_and_zero_turns_the_anchor_off(gan_row, anchor):
    _add_model()
    with pytest.raises(ValueError, match="anchor weight .* must be"):
        gan_finetune.start_finetune(gan_row, 10, 0.1, user=account(), anchor_weight=anchor, launch=False)
    off = gan_finetune.start_finetune(gan_row, 10, 0.1, user=account(), anchor_weight=0.0, launch=False)
    assert runs_db.get_run(off).config["finetune"]["anchor_weight"] == 0.0


def test_only_a_finished_gan_runs_newest_checkpoint_can_be_fine_tuned(gan_row):
    _add_model()
    with pytest.raises(ValueError, match=r"only the newest checkpoint of a run \(step 4 of run"):
        gan_finetune.start_finetune(gan_row, 10, 1.0, step=2, user=account(), launch=False)
    other = runs_db.create_run("feedback", ds_db.get_dataset("d").id, {}, seed=0)
    with pytest.raises(ValueError, match="is a feedback run, not a GAN run"):
        gan_finetune.start_finetune(other, 10, 1.0, user=account(), launch=False)
    busy = runs_db.create_run("gan", ds_db.get_dataset("d").id, runs_db.get_run(gan_row).config, seed=0)
    with pytest.raises(ValueError, match="still queued: wait for it to finish"):
        gan_finetune.start_finetune(busy, 10, 1.0, user=account(), launch=False)


@pytest.mark.databases("sqlite", "postgresql")
def test_the_fine_tune_is_a_gan_run_that_records_its_parent_model_and_numbers(gan_row):
    model = _add_model()
    admin = account("admin", "ada")
    run_id = gan_finetune.start_finetune(gan_row, 10, 0.5, user=admin, launch=False)
    run = runs_db.get_run(run_id)
    assert run.kind == "gan" and run.started_by == "ada" and run.status == "queued"
    assert run.config["finetune"] == {"parent_run": gan_row, "parent_step": 4, "acceptance_model_id": model["id"],
                                      "acceptance_model_version": model["version"], "reward_weight": 0.5,
                                      "anchor_weight": gan_finetune.DEFAULT_ANCHOR_WEIGHT, "steps": 10, "seed": 0}
    assert run.config["steps"] == 14 and run.config["checkpoint_every"] == 2  # parent's 2 <= 10 / 4 rounded up
    assert run.config["resume_from_checkpoint"] == f"runs/run_{gan_row:05d}/checkpoints/step_000004.pt"
    assert run.train_set_hash == "digest" and run.train_set_size == 8
    assert "Fine-tuned from GAN run" in gan_finetune.describe(run.config)
    assert gan_finetune.describe(runs_db.get_run(gan_row).config) is None


def test_cli_gan_finetune_json(gan_row, monkeypatch, capsys):
    from wbc_core import jobs
    from wbc_core.cli.main import main

    _add_model()
    account("admin")
    launched = []
    monkeypatch.setattr(jobs, "launch", launched.append)
    assert main(["gan", "finetune", str(gan_row), "--steps", "8", "--reward-weight", "2", "--detach", "--json",
                 "--as", "admin"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "queued" and launched == [out["run_id"]]
    assert runs_db.get_run(out["run_id"]).config["finetune"]["reward_weight"] == 2.0
    assert main(["gan", "finetune", str(gan_row), "--steps", "8", "--reward-weight", "2", "--anchor-weight", "3",
                 "--detach", "--json", "--as", "admin"]) == 0
    assert runs_db.get_run(json.loads(capsys.readouterr().out)["run_id"]).config["finetune"]["anchor_weight"] == 3.0
    assert main(["--json", "gan", "finetune", str(gan_row), "--steps", "8", "--reward-weight", "nan",
                 "--as", "admin"]) == 2
    assert "acceptance reward weight must be" in json.loads(capsys.readouterr().out)["error"]


# -- end to end: a tiny GAN, a tiny acceptance model, the fine-tune job, steered candidates, the page ------------

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """Dataset "d" (12 red a and 12 blue b cells at 32 px), a finished 4-step GAN run, and acceptance model v1
    trained on reviewed candidates (a: red accepted, blue rejected; b the other way round) with the tiny judge."""
    from db.migrate import ensure_schema
    from wbc_core import feedback, gan_runs, importing, review_model, worker

    root = tmp_path_factory.mktemp("finetune")
    folder = root / "folder"
    rng = np.random.default_rng(0)
    for name, colour in zip(CLASSES, (RED, BLUE), strict=True):
        (folder / name).mkdir(parents=True)
        for i in range(12):
            draw_cell(rng, 32, colour).save(folder / name / f"{i:02d}.png")
    with module_home(root / "home"), pytest.MonkeyPatch.context() as mp:
        ensure_schema()
        importing.import_folder(folder, "d", size=32, user=account())
        run_id = gan_runs.start_gan_run("d", TINY_GAN, launch=False, user=account())
        assert worker.main(run_id) == 0
        dataset_id = ds_db.get_dataset("d").id
        rows = []
        for c in CLASSES:
            for kind, colour in (("red", RED), ("blue", BLUE)):
                rows += drawn_candidates(rng, c, kind, colour, 4, 32)
        ids = ds_db.add_images(dataset_id, rows)
        me = account("reviewer", "ann")
        good = [ids[i] for i in (*range(0, 4), *range(12, 16))]
        review_model.decide(good, "ann", "accept", user=me)
        review_model.decide([i for i in ids if i not in good], "ann", "reject", user=me)
        mp.setattr(gan_runs, "quality_reference", lambda dataset_id, size: fake_reference())
        feedback.train_model(dataset_id)
        yield root / "home", run_id


@pytest.fixture()
def home(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A private copy of the built home, active, with the tiny judge as the dataset's judge; yields the GAN run."""
    from wbc_core import gan_runs

    src, run_id = built
    monkeypatch.setenv("WBC_AUTH", "off")
    monkeypatch.setattr(gan_runs, "quality_reference", lambda dataset_id, size: fake_reference())
    with active_home(copy_home(src, tmp_path / "home"), monkeypatch):
        yield run_id


def test_the_fine_tune_job_writes_self_describing_checkpoints_and_steered_candidates(home):
    from db.engine import read_session
    from db.models import Image
    from wbc_core import gan_runs, worker
    from wbc_core.gan import load_generator
    from wbc_core.gan.checkpoint import is_full, load_checkpoint

    model = acc_db.latest_model(ds_db.get_dataset("d").id)
    tuned = gan_finetune.start_finetune(home, 4, 1.0, user=account(), launch=False)
    assert worker.main(tuned) == 0, runs_db.get_run(tuned).error
    run = runs_db.get_run(tuned)
    assert run.status == "succeeded" and run.result["steps_done"] == 8
    assert 0 <= run.result["finetune"]["reward_p_accept"] <= 1
    saved = runs_db.checkpoints(tuned)
    assert [c["step"] for c in saved] == [5, 6, 7, 8]
    assert all(c["path"].startswith(f"runs/run_{tuned:05d}/") for c in saved), "written under the new run's folder"
    newest, oldest = (load_checkpoint(current().home / saved[i]["path"]) for i in (-1, 0))
    want = {"parent_run": home, "parent_step": 4, "acceptance_model_id": model["id"],
            "acceptance_model_version": model["version"]}
    assert want.items() <= newest["finetune"].items() and is_full(newest)
    assert want.items() <= oldest["finetune"].items() and not is_full(oldest), "lightened ones still describe it"
    assert "reward_p_accept" in newest["metrics"] and newest["metrics"]["anchor_distance"] >= 0
    assert load_generator(current().home / saved[-1]["path"]).step == 8  # samples like any GAN checkpoint

    plain = gan_runs.generate_candidates(home, per_class=2, seed=0)
    steered = gan_runs.generate_candidates(tuned, per_class=2, seed=0)
    assert steered["finetune"]["acceptance_model_id"] == model["id"] and "finetune" not in plain
    with read_session() as s:
        marks = {i.id: (i.steered, i.steer_model_id) for i in s.query(Image).filter(Image.gan_run_id.isnot(None))}
    first_plain, first_tuned = plain["first_id"], steered["first_id"]
    assert {marks[i] for i in range(first_tuned, first_tuned + 4)} == {(True, model["id"])}
    assert {marks[i] for i in range(first_plain, first_plain + 4)} == {(False, None)}


def test_generate_page_expander_starts_a_fine_tune(home, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from wbc_core import jobs

    launched = []
    monkeypatch.setattr(jobs, "launch", launched.append)
    at = AppTest.from_file(str(ROOT / "pages/generate.py"), default_timeout=60).run()
    assert not at.exception and not at.error
    at.number_input(key="ft_steps").set_value(20)
    at.number_input(key="ft_weight").set_value(0.5)
    at.number_input(key="ft_anchor").set_value(2.5)
    at.button(key="finetune").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [tuned] = launched
    assert runs_db.get_run(tuned).config["finetune"]["reward_weight"] == 0.5
    assert runs_db.get_run(tuned).config["finetune"]["anchor_weight"] == 2.5
    assert any(f"Fine-tuning run {tuned} started" in str(t.value) for t in at.toast)
    at.run()
    assert at.selectbox(key="gan_run").value == tuned
    assert any("Fine-tuned from GAN run" in str(c.value) for c in at.caption)


def test_a_fine_tune_starts_its_live_generator_from_the_parents_ema_weights(home, tmp_path):
    import torch

    from wbc_core import gan_runs, store
    from wbc_core.gan import GanConfig, train_gan
    from wbc_core.gan.checkpoint import load_checkpoint
    from wbc_core.gan.train import TrainHooks

    info = ds_db.get_dataset("d")
    parent_path, step = gan_runs.checkpoint_path(home)
    parent = load_checkpoint(parent_path)
    config = GanConfig.from_dict(runs_db.get_run(home).config)  # steps == the parent's step: nothing more to train
    data = store.labelled(info.id, gan_runs.gan_training_rows(info.id), info.class_names, 32)
    for hooks, source in ((TrainHooks(ema_restart_step=step), "generator_ema"), (None, "generator")):
        out = train_gan(data, info.class_names, config, tmp_path / source, resume_from=parent_path, hooks=hooks)
        live = load_checkpoint(out.last_checkpoint)["generator"]
        assert all(torch.equal(live[k], parent[source][k]) for k in live)
    assert not all(torch.equal(parent["generator"][k], parent["generator_ema"][k]) for k in live), "a real check"
