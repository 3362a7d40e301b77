"""The Streamlit pages under AppTest: every page renders on an empty and on a populated database,
and the main widgets of each page do what they say (checked in the database, not only on screen).

The populated home (an imported dataset, a finished GAN run with candidates, a finished classifier run)
is built once per module and copied for every test that uses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from support import account, active_home, copy_home, module_home, use_settings

from db import datasets as ds_db
from db import runs as runs_db
from db.migrate import ensure_schema
from wbc_core import jobs

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["pages/data.py", "pages/generate.py", "pages/review.py", "pages/train.py", "pages/dashboard.py"]
DATASET = "cells"
CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil", "platelet"]
CANDIDATES_PER_CLASS = 4
TIMEOUT = 60


# -- fixtures -------------------------------------------------------------------------------------



def _stop_run(run_id: int) -> runs_db.RunInfo:
    """Cancel a run started by a test and wait until its worker process is gone."""
    jobs.cancel(run_id, account())
    info = jobs.wait(run_id, timeout=120)
    assert not info.active, f"run {run_id} still {info.status} after cancel"
    pid = runs_db.get_run(run_id).pid
    deadline = time.monotonic() + 60
    while pid and jobs.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (pid and jobs.pid_alive(pid)), f"worker {pid} of run {run_id} outlived its cancel"
    return info


@pytest.fixture(scope="module")
def built_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A WBC_HOME with dataset 'cells' (5 classes, 32 px), a finished GAN run with 4 candidates per class
    and a finished real-only classifier run; built once for the module through the domain API."""
    from wbc_core import gan_runs, importing, retrain
    from wbc_core.data.demo import write_demo_folder

    root = tmp_path_factory.mktemp("pages")
    home = root / "home"
    with module_home(home):
        ensure_schema()
        folder = write_demo_folder(root / "folder", per_class=8, size=32, seed=1)
        importing.import_folder(folder, DATASET, size=32, user=account())
        gan = gan_runs.start_gan_run(DATASET, {"steps": 12, "batch_size": 8, "g_width": 8, "d_width": 8,
                                               "checkpoint_every": 6}, user=account())
        clf = retrain.start_classifier_run(DATASET, "real", {"epochs": 1, "model": "small_cnn"}, user=account())
        for run_id in (gan, clf):  # the two jobs train side by side
            info = jobs.wait(run_id, timeout=180)
            assert info.status == "succeeded", f"run {run_id}: {info.status} {info.error}"
        gan_runs.generate_candidates(gan, per_class=CANDIDATES_PER_CLASS)
    yield home


@pytest.fixture()
def full_home(built_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private copy of the populated home, active for this test."""
    with active_home(copy_home(built_home, tmp_path / "home"), monkeypatch) as home:
        yield home


@pytest.fixture(autouse=True)
def _no_sign_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the pages' work, not sign-in (tests/test_pages_review.py covers that): run every
    page as the implicit local admin of WBC_AUTH=off."""
    monkeypatch.setenv("WBC_AUTH", "off")
    monkeypatch.delenv("WBC_USER", raising=False)


# -- helpers --------------------------------------------------------------------------------------


def app(script: str, reviewer: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / script), default_timeout=TIMEOUT)
    if reviewer is not None:
        at.session_state["reviewer"] = reviewer
    return at.run()


def ok(at: AppTest) -> AppTest:
    """Fail with the page's own traceback text when a run raised."""
    assert not at.exception, "\n\n".join(e.value + "\n" + "\n".join(e.stack_trace) for e in at.exception)
    return at


def by_label(elements, label: str):  # noqa: ANN001, ANN201
    found = [e for e in elements if e.label == label]
    assert found, f"no widget labelled {label!r}; have {[e.label for e in elements]}"
    return found[0]


def texts(elements) -> str:  # noqa: ANN001
    return "\n".join(str(e.value) for e in elements)


def dataset_id() -> int:
    return ds_db.get_dataset(DATASET).id


# -- every page renders ---------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["app.py", *PAGES])
def test_page_renders_on_an_empty_database(wbc_home, script):
    at = ok(app(script))
    assert "No dataset yet" in texts(at.info)


@pytest.mark.parametrize("script", ["app.py", *PAGES])
def test_page_renders_with_data_runs_and_candidates(full_home, script):
    at = ok(app(script, reviewer="ann"))
    assert not at.error, texts(at.error)
    assert at.title


@pytest.mark.parametrize("page", PAGES)
def test_frame_runs_every_page_with_the_sidebar(full_home, page):
    at = ok(app("app.py", reviewer="ann"))
    ok(at.switch_page(page).run())
    # AppTest's second run goes through Streamlit's legacy `pages/` folder path; the page must still
    # run inside the frame (frame.ensure_frame), so the shared sidebar is there.
    assert [s.value for s in at.sidebar.selectbox] == [DATASET]
    assert "Sign-in is off" in texts(at.sidebar.caption)  # the frame's sign-in line (was: a reviewer text box)
    ok(at.run())
    assert [s.value for s in at.sidebar.selectbox] == [DATASET]


# -- Data -----------------------------------------------------------------------------------------


def _finish_import(at: AppTest) -> AppTest:
    """Wait for the import job the page queued (it must succeed), then let the page's status panel pick it up."""
    [job] = runs_db.list_runs(kind="import", limit=1)
    info = jobs.wait(job.id, timeout=240)
    assert info.status == "succeeded", info.error
    return ok(at.run())


def test_data_demo_button_queues_an_import_job_that_creates_the_demo(wbc_home):
    at = ok(app("pages/data.py"))
    at.selectbox(key="demo_size").set_value(32)
    ok(at.button(key="create_demo").click().run())
    [job] = runs_db.list_runs(kind="import")  # the click only queued the job
    assert (job.config["source_kind"], job.config["size"]) == ("demo", 32)
    _finish_import(at)
    info = ds_db.get_dataset("demo")
    assert info.kind == "demo" and info.image_size == 32
    assert any(s.value.startswith("demo · demo · 5 classes · 32 px") for s in at.subheader)
    table = at.dataframe[0].value
    assert list(table.index) == CLASSES
    assert (table["total real"] == 60).all()
    assert "not real cells" in texts(at.warning)
    assert at.button(key="create_demo").disabled  # a second demo could only fail on its name


def test_data_folder_form_imports_and_selects_the_new_dataset(full_home, tmp_path):
    from wbc_core.data.demo import write_demo_folder

    folder = write_demo_folder(tmp_path / "more", per_class=5, size=32, seed=7)
    with use_settings(import_roots=(tmp_path,)):
        at = ok(app("app.py"))  # through the frame: the sidebar's dataset selectbox already exists
        by_label(at.text_input, "Folder with one subfolder per class").set_value(str(folder))
        by_label(at.text_input, "Dataset name").set_value("more")
        by_label(at.selectbox, "Working size (px)").set_value(32)
        ok(at.form_submit_button[0].click().run())
        assert not at.error, texts(at.error)
        at = _finish_import(at)
        assert {d.name for d in ds_db.list_datasets()} == {DATASET, "more"}
        assert [s.value for s in at.sidebar.selectbox] == ["more"]
        assert any(s.value.startswith("more · real · 5 classes · 32 px") for s in at.subheader)
        assert list(at.dataframe[0].value.index) == CLASSES


@pytest.mark.parametrize(("folder", "message"), [
    ("/etc", "is not inside a folder this server imports from"),
    ("{root}/not/here", "does not exist"),
    ("   ", "enter the folder to import"),
])
def test_data_folder_form_shows_a_plain_error_and_queues_nothing(wbc_home, tmp_path, folder, message):
    with use_settings(import_roots=(tmp_path,)):
        at = ok(app("pages/data.py"))
        by_label(at.text_input, "Folder with one subfolder per class").set_value(folder.format(root=tmp_path))
        by_label(at.text_input, "Dataset name").set_value("x")
        ok(at.form_submit_button[0].click().run())
    assert len(at.error) == 1 and message in at.error[0].value
    assert "Traceback" not in at.error[0].value
    assert "passwd" not in at.error[0].value and "ssl" not in at.error[0].value  # no other file is named
    assert ds_db.list_datasets() == [] and runs_db.list_runs(kind="import") == []


# -- Generate -------------------------------------------------------------------------------------


def test_generate_form_starts_a_gan_run(full_home):
    before = {r.id for r in runs_db.list_runs(kind="gan")}
    at = ok(app("pages/generate.py"))
    by_label(at.number_input, "Steps").set_value(10)
    by_label(at.number_input, "Batch").set_value(8)
    by_label(at.number_input, "Width").set_value(8)
    by_label(at.selectbox, "Size (px)").set_value(32)
    ok(at.form_submit_button[0].click().run())
    new = [r for r in runs_db.list_runs(kind="gan") if r.id not in before]
    try:
        assert len(new) == 1
        run = new[0]
        assert run.dataset_name == DATASET
        assert (run.config["steps"], run.config["batch_size"], run.config["g_width"], run.config["image_size"]) == (
            10, 8, 8, 32)
        assert at.session_state["gan_run"] == run.id
        assert by_label(at.selectbox, "GAN run").value == run.id  # the page follows the new run
    finally:
        for run in new:
            _stop_run(run.id)


def test_generate_button_adds_candidates(full_home):
    before = len(ds_db.candidates(dataset_id()))
    at = ok(app("pages/generate.py"))
    [bar] = at.get("progress")
    assert bar.value == 100 and bar.proto.text == "**succeeded**"
    assert by_label(at.select_slider, "Checkpoint (step)").value == 12
    by_label(at.number_input, "Candidates per class").set_value(2)
    ok(by_label(at.button, "Generate candidates").click().run())
    # The click only queued a job: no candidate exists yet when the page has answered.
    [job] = runs_db.list_runs(kind="generate")
    assert job.config["per_class"] == 2 and job.config["step"] == 12
    assert jobs.wait(job.id, timeout=240).status == "succeeded", jobs.wait(job.id).error
    assert len(ds_db.candidates(dataset_id())) == before + 2 * len(CLASSES)
    ok(at.run())  # the job panel reports the outcome
    assert "added 10 candidates" in texts(at.success)


# -- Review ---------------------------------------------------------------------------------------
# The review page is tested in tests/test_pages_review.py (sign-in, keyboard actions, bulk, undo, roles).


# -- Train ----------------------------------------------------------------------------------------


def test_train_form_starts_a_classifier_run(full_home):
    before = {r.id for r in runs_db.list_runs(kind="classifier")}
    at = ok(app("pages/train.py"))
    by_label(at.radio, "Recipe").set_value("curated")
    by_label(at.selectbox, "Model").set_value("small_cnn")
    by_label(at.number_input, "Epochs").set_value(1)
    ok(at.form_submit_button[0].click().run())
    new = [r for r in runs_db.list_runs(kind="classifier") if r.id not in before]
    try:
        assert len(new) == 1
        run = new[0]
        assert (run.recipe, run.config["model"], run.config["epochs"]) == ("curated", "small_cnn", 1)
        assert by_label(at.selectbox, "Run").value == run.id
    finally:
        for run in new:
            _stop_run(run.id)


def test_train_shows_the_finished_run_with_its_test_score(full_home):
    at = ok(app("pages/train.py"))
    [bar] = at.get("progress")
    assert bar.value == 100 and bar.proto.text.startswith("**succeeded** on ")
    assert "·" not in bar.proto.text  # no stale progress line from the worker after the run ended
    assert by_label(at.metric, "Test macro-F1 (real test cells)")
    runs, per_class = at.dataframe[0].value, at.dataframe[1].value  # the runs table (who started), then F1 per class
    assert runs["started by"].tolist() == ["admin"] and runs["cancelled by"].isna().all()
    assert list(per_class["class"]) == CLASSES


# -- Dashboard ------------------------------------------------------------------------------------


def test_dashboard_shows_per_class_f1_of_finished_runs(full_home):
    at = ok(app("pages/dashboard.py"))
    assert "Test F1 per class" in texts(at.subheader)
    runs = at.dataframe[0].value
    assert list(runs["status"]) == ["succeeded"]
    run_id = int(runs["run"].iloc[0])
    assert by_label(at.selectbox, "Baseline (real only)").value == run_id
    per_class = at.dataframe[1].value
    assert list(per_class.index) == CLASSES and list(per_class.columns) == [f"run {run_id}"]


# -- caveats beside the numbers (issue 16) ----------------------------------------------------------


def test_train_and_dashboard_show_test_cells_ci_and_small_class_warnings(full_home):
    at = ok(app("pages/train.py"))
    assert "real test cell" in texts(at.caption)  # "macro-F1 … [95% CI …] on N real test cells"
    assert "Few test cells" in texts(at.warning).replace("\\", "")  # 8 demo cells per class: ~1 test cell each
    assert "test cells" in at.dataframe[-1].value.columns
    at = ok(app("pages/dashboard.py"))
    run_id = int(at.dataframe[0].value["run"].iloc[0])
    assert f"Baseline in use: run {run_id} itself" in texts(at.caption)
    assert f"Run {run_id}: few test cells" in texts(at.warning).replace("\\", "")
    runs = at.dataframe[0].value
    assert {"test cells", "caveat"} <= set(runs.columns) and "few test cells" in runs["caveat"].iloc[0]


def test_admin_renames_and_deletes_with_confirmation(full_home):
    at = ok(app("pages/admin.py"))
    assert at.button(key="rename_dataset").disabled  # no new name yet
    ok(at.text_input(key="rename_to").set_value("blood").run())
    ok(at.button(key="rename_dataset").click().run())
    assert ds_db.get_dataset("blood").id  # names are shown as text (escaped), hence the replace
    assert "is now 'blood'" in texts(at.success).replace("\\", "")
    run_id = int(at.selectbox(key="manage_run").value)
    assert at.button(key="delete_run").disabled  # not confirmed yet
    ok(at.checkbox(key="delete_run_confirm").check().run())
    ok(at.button(key="delete_run").click().run())
    assert runs_db.get_run(run_id).archived_at is not None
    assert at.button(key="delete_dataset").disabled
    at.text_input(key="delete_dataset_confirm").set_value("blood")
    ok(at.run())
    ok(at.button(key="delete_dataset").click().run())
    assert "deleted dataset 'blood'" in texts(at.success).replace("\\", "")
    assert ds_db.list_datasets() == [] and len(ds_db.list_datasets(include_archived=True)) == 1
