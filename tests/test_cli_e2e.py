"""The whole loop from the command line on tiny data: import -> train-gan -> generate -> review -> train -> runs."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import context_on

ROOT = Path(__file__).resolve().parent.parent


def cli(home: Path, *args: str, ok: bool = True, db_url: str | None = None, stdin: str | None = None) -> dict:
    env = {**os.environ, "WBC_HOME": str(home)}
    env.pop("WBC_DB_URL", None)
    if db_url:  # PostgreSQL; else the home's SQLite file
        env["WBC_DB_URL"] = db_url
    out = subprocess.run([sys.executable, "-m", "wbc_core", "--json", *args], cwd=ROOT, env=env, input=stdin or "",
                         capture_output=True, text=True, timeout=600)
    assert (out.returncode == 0) == ok, f"exit {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}"
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one line, got: {out.stdout!r}"
    return json.loads(lines[0])


@pytest.mark.slow
@pytest.mark.databases("sqlite", "postgresql")
def test_full_loop_from_the_cli(tiny_folder, tmp_path, db_url):
    home = tmp_path / "home"
    wbc = functools.partial(cli, db_url=db_url)  # every command on the test's database
    imported = wbc(home, "import", str(tiny_folder), "--name", "tiny", "--size", "32", "--seed", "3")
    assert imported["name"] == "tiny"
    assert {c: sum(v[s] for s in ("train", "val", "test")) for c, v in imported["classes"].items()} == {
        "lymphocyte": 12, "neutrophil": 12, "platelet": 12}

    if not torch.cuda.is_available():  # the GPU preset is refused before any job is queued
        refused = wbc(home, "train-gan", "--dataset", "tiny", "--preset", "cuda", ok=False)
        assert "no CUDA GPU" in refused["error"]
    gan = wbc(home, "train-gan", "--dataset", "tiny", "--preset", "cpu", "--steps", "12", "--batch", "8",
              "--width", "8", "--checkpoint-every", "6", "--aux-weight", "0.5")
    assert gan["status"] == "succeeded" and gan["steps_done"] == 12
    assert (gan["config"]["aux_weight"], gan["config"]["g_width"]) == (0.5, 8)  # flags on top of the preset
    assert gan["train_set_hash"] and len(gan["train_set_hash"]) == 64

    generated = wbc(home, "generate", "--run", str(gan["run_id"]), "--per-class", "4")
    assert generated["candidates"] == 12 and generated["checkpoint_step"] == 12
    again = wbc(home, "generate", "--run", str(gan["run_id"]), "--per-class", "1", "--step", "6")
    assert again["seed"] != generated["seed"] and again["checkpoint_step"] == 6

    # The CLI acts as the machine's owner ("local", made admin by the first command); reviewers are accounts.
    refused = wbc(home, "review", "--dataset", "tiny", "--reviewer", "ann", "--accept", "--all", ok=False)
    assert "no reviewer account 'ann'" in refused["error"]
    wbc(home, "user", "add", "ann", "--role", "reviewer", "--password-stdin", stdin="s3cret-pass\n")
    accepted = wbc(home, "review", "--dataset", "tiny", "--reviewer", "ann", "--accept", "--class", "platelet")
    assert accepted["decided"] == 5
    rejected = wbc(home, "review", "--dataset", "tiny", "--reviewer", "ann", "--reject", "--all")
    assert rejected["decided"] == 10

    trained = wbc(home, "train", "--dataset", "tiny", "--recipe", "curated", "--epochs", "1")
    assert trained["status"] == "succeeded"
    test = trained["test"]
    assert set(test) >= {"accuracy", "macro_f1", "per_class_f1"}
    assert set(test["per_class_f1"]) == {"lymphocyte", "neutrophil", "platelet"}
    assert trained["test_size"] == sum(v["test"] for v in imported["classes"].values())
    # Caveats beside the numbers: about 2 test cells per class is far below the small-class threshold.
    assert trained["test_cells"] == trained["test_size"] and any("few test cells" in w for w in trained["caveats"])

    listed = wbc(home, "runs")["runs"]
    assert [(r["id"], r["kind"], r["status"]) for r in listed] == [
        (trained["run_id"], "classifier", "succeeded"), (gan["run_id"], "gan", "succeeded")]
    assert listed[0]["test_macro_f1"] == pytest.approx(test["macro_f1"])
    assert listed[0]["test_cells"] == trained["test_size"] and listed[0]["caveats"] == trained["caveats"]
    assert {(r["started_by"], r["cancelled_by"]) for r in listed} == {("local", None)}

    # The database agrees with what the CLI printed.
    with context_on(home, db_url):
        from db.runs import get_run

        run = get_run(trained["run_id"])
        # 24 real train cells + 5 accepted platelet candidates: the curated set, nothing from val/test.
        real_train = sum(v["train"] for v in imported["classes"].values())
        assert run.train_set_size == real_train + 5
        assert run.train_set_summary["by_origin_class"]["synthetic/platelet"] == 5
        assert run.recipe == "curated" and run.config["epochs"] == 1


def test_cli_errors_are_plain_and_nonzero(tmp_path):
    home = tmp_path / "home"
    missing = cli(home, "import", str(tmp_path / "nowhere"), "--name", "x", ok=False)
    assert "does not exist" in missing["error"]
    unknown = cli(home, "train-gan", "--dataset", "nope", ok=False)
    assert "no dataset 'nope'" in unknown["error"]
    bad_run = cli(home, "generate", "--run", "42", "--per-class", "3", ok=False)
    assert "no run 42" in bad_run["error"]
    # Bad values (issue 12): a plain line in a real process, before anything is allocated or queued.
    absurd = cli(home, "generate", "--run", "42", "--per-class", "99999999999", ok=False)
    assert "candidates per class must be a whole number from 1 to 5,000" in absurd["error"]
    typo = cli(home, "train-gan", "--dataset", "nope", "--steps", "1e23", ok=False)
    assert "invalid int value: '1e23'" in typo["error"]


def test_demo_dataset_is_labelled_as_demo(tmp_path):
    out = cli(tmp_path / "home", "demo", "--per-class", "6", "--size", "32")
    assert out["demo"] is True and out["kind"] == "demo"
    listed = cli(tmp_path / "home", "datasets")["datasets"]
    assert listed[0]["kind"] == "demo"
