"""The Generate page under AppTest: quality scoring of a checkpoint, the quality plot, and scored candidates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from support import account, active_home, copy_home, module_home

from db import datasets as ds_db
from db import runs as runs_db
from db.engine import read_session
from db.migrate import ensure_schema
from wbc_core import jobs

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60



@pytest.fixture(scope="module")
def built_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """Dataset 'cells' (demo, 5 classes x 14 at 32 px) and a finished 4-step GAN run trained in this process."""
    from wbc_core import gan_runs, importing, worker
    from wbc_core.data.demo import write_demo_folder

    root = tmp_path_factory.mktemp("generate_page")
    home = root / "home"
    with module_home(home):
        ensure_schema()
        importing.import_folder(write_demo_folder(root / "folder", per_class=14, size=32, seed=1), "cells", size=32,
                                user=account())
        run_id = gan_runs.start_gan_run("cells", {"steps": 4, "batch_size": 8, "g_width": 8, "d_width": 8,
                                                  "checkpoint_every": 2, "device": "cpu", "num_threads": 1},
                                        launch=False, user=account())
        assert worker.main(run_id) == 0  # in-process: no second torch import, no polling
    yield home, run_id


@pytest.fixture()
def home(built_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A private copy of the built home, active for this test (login off); yields the GAN run id."""
    src, run_id = built_home
    monkeypatch.setenv("WBC_AUTH", "off")
    with active_home(copy_home(src, tmp_path / "home"), monkeypatch):
        yield run_id


def _finish(kind: str):
    """Wait for the one job of a kind the page queued; it must succeed. Returns its run info."""
    [job] = runs_db.list_runs(kind=kind)
    info = jobs.wait(job.id, timeout=240)
    assert info.status == "succeeded", info.error
    return info


def page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages/generate.py"), default_timeout=TIMEOUT).run()
    return ok(at)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n\n".join(e.value + "\n" + "\n".join(e.stack_trace) for e in at.exception)
    assert not at.error, "\n".join(str(e.value) for e in at.error)
    return at


def test_page_renders_with_the_quality_section_and_no_metrics_yet(home) -> None:
    at = page()
    assert "Quality over checkpoints" in [s.value for s in at.subheader]
    assert any("No quality metrics yet" in str(i.value) for i in at.info)
    assert at.select_slider[0].value == 4  # newest checkpoint preselected
    assert at.button(key="score_quality").label == "Score quality for step 4"


def test_score_quality_button_stores_metrics_and_plots_them(home) -> None:
    run_id = home
    at = page()
    at.number_input(key="quality_per_class").set_value(8)
    ok(at.button(key="score_quality").click().run())
    _finish("quality")
    ok(at.run())
    assert any("measured checkpoint 4" in str(s.value) for s in at.success)
    names = {r["name"] for r in runs_db.metrics([run_id]) if r["step"] == 4}
    assert {"quality/fd_ratio", "quality/coverage", "quality/acceptance", "quality/memorised"} <= names
    assert at.selectbox(key="quality_metric").value == "fd_ratio"
    assert len(at.get("plotly_chart")) >= 2  # the loss curves and the quality plot
    ok(at.selectbox(key="quality_metric").set_value("acceptance").run())
    ok(at.multiselect(key="quality_groups").set_value(["all", "lymphocyte"]).run())
    assert at.dataframe, "the per-class table of the selected checkpoint is shown"
    assert any(m.value.startswith("**Verdict for step 4:**") for m in at.markdown)  # close / different / far


def test_finished_run_shows_a_full_bar_and_one_grid_labelled_by_class(home) -> None:
    at = page()
    [bar] = at.get("progress")
    assert bar.value == 100 and bar.proto.text.startswith("**succeeded**")
    grids = at.get("image")
    assert len(grids) == 1, "the sample grid is shown once"
    [caption] = grids[0].captions
    classes = ds_db.get_dataset("cells").class_names
    assert f"top to bottom: {', '.join(classes)}" in caption


def test_generate_button_adds_scored_candidates(home) -> None:
    from db.models import Image

    at = page()
    at.number_input(key="per_class").set_value(3)
    ok(at.button(key="generate").click().run())
    assert any("started in the background" in str(t.value) for t in at.toast)
    job = _finish("generate")
    assert job.config == {"gan_run_id": home, "per_class": 3, "step": 4, "seed": None, "classes": None}
    ok(at.run())
    assert any("scored 15" in str(s.value) for s in at.success), [s.value for s in at.success]
    rows = ds_db.candidates(ds_db.get_dataset("cells").id)
    assert len(rows) == 15
    with read_session() as s:
        probs = [p for (p,) in s.query(Image.judge_prob).filter(Image.origin == "synthetic")]
    assert len(probs) == 15 and all(p is not None and 0 <= p <= 1 for p in probs)


def test_steering_passes_its_factor_and_guard_and_says_plainly_that_it_needs_an_acceptance_model(home,
                                                                                                 monkeypatch) -> None:
    from wbc_core import generation

    at = page()
    assert at.selectbox(key="steer_guard").disabled  # steering off: no guard to choose
    at.number_input(key="steer").set_value(4)
    at.run()
    assert at.selectbox(key="steer_guard").value == "coverage"  # the default: the guard that kept coverage
    at.selectbox(key="steer_guard").set_value("radius")
    at.button(key="generate").click().run()
    assert "has none yet" in "\n".join(str(e.value) for e in at.error)  # no review decisions, so no model
    assert runs_db.list_runs(kind="generate") == []  # refused before anything was queued
    asked = {}
    monkeypatch.setattr(generation, "start_generation", lambda *a, **kw: asked.update(kw))
    ok(at.button(key="generate").click().run())
    assert asked["steer"] == 4 and asked["steer_guard"] == "radius"


def test_presets_fill_the_form_and_cuda_is_refused_plainly_without_a_gpu(home, monkeypatch) -> None:

    from wbc_core import hardware
    from wbc_core.gan import CUDA_PRESET, GanConfig

    monkeypatch.setattr(hardware, "cuda_visible", lambda: False)
    at = page()
    assert at.radio(key="gan_preset").value == "cpu"  # suggested: this machine (as patched) has no GPU
    width = next(w for w in at.number_input if w.label == "Width")
    head = next(w for w in at.number_input if w.label == "Class head (AC-GAN)")
    assert (width.value, head.value) == (GanConfig().g_width, GanConfig().aux_weight)
    at = ok(at.radio(key="gan_preset").set_value("cuda").run())
    values = {w.label: w.value for w in at.number_input}
    assert (values["Width"], values["Batch"], values["Steps"]) == (
        CUDA_PRESET["g_width"], CUDA_PRESET["batch_size"], CUDA_PRESET["steps"])
    size = next(w for w in at.selectbox if w.label == "Size (px)")
    assert size.value == 32  # the preset's 128, capped at this dataset's working size
    before = len(runs_db.list_runs(kind="gan"))
    at = at.form_submit_button[0].click().run()
    assert len(at.error) == 1 and "no CUDA GPU" in at.error[0].value and "CPU preset" in at.error[0].value
    assert len(runs_db.list_runs(kind="gan")) == before  # nothing queued that could only fail


def test_the_gan_form_saves_the_compile_choice(home, monkeypatch) -> None:
    monkeypatch.setattr(jobs, "launch", lambda run_id: None)  # queued only: this test reads the saved config
    at = page()
    assert next(w for w in at.selectbox if w.label == "Compile (torch.compile)").value == "auto"
    next(w for w in at.selectbox if w.label == "Compile (torch.compile)").set_value("off")
    next(w for w in at.number_input if w.label == "Batch").set_value(16)  # the home has 50 train cells
    before = {r.id for r in runs_db.list_runs(kind="gan")}
    at = at.form_submit_button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [new] = [r for r in runs_db.list_runs(kind="gan") if r.id not in before]
    assert runs_db.get_run(new.id).config["compile"] == "off"
