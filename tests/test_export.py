"""Curated export: ImageFolder zip layout, manifest provenance, hygiene (candidates only in train, blind cells
never as candidates), permissions, and the `export` CLI command end to end."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from support import account, draw_cell, require_module

from db import datasets as ds_db
from db import decisions as decisions_db
from wbc_core import auth, review_model
from wbc_core.export import (
    HF_COLUMNS,
    HF_TEXT_COLUMNS,
    MANIFEST_COLUMNS,
    export_curated,
    export_curated_hf,
    export_curated_zip,
    safe_name,
)
from wbc_core.importing import import_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def curated(wbc_home, tiny_folder):
    """tiny (3 classes x 12 real JPEGs) plus 6 platelet candidates as PNG files, with decisions."""
    result = import_folder(tiny_folder, "tiny", size=32, user=account())
    folder = wbc_home / "images" / "cands"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        path = folder / f"c{i}.png"
        draw_cell(rng, 32, (90, 40, 110)).save(path)
        rows.append(dict(origin="synthetic", class_name="platelet", split=None, sha256=f"{i:064d}",
                         path=str(path.relative_to(wbc_home)), width=32, height=32, checkpoint_step=12, seed=7 + i))
    ids = ds_db.add_images(result.dataset_id, rows)
    review_model.decide([ids[0]], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[0]], "bob", "accept", user=account("reviewer", "bob"))
    review_model.decide([ids[1]], "ann", "relabel", new_class="lymphocyte", user=account("reviewer", "ann"))
    review_model.decide([ids[2]], "ann", "reject", reason="GAN texture artefact", user=account("reviewer", "ann"))
    review_model.decide([ids[3]], "ann", "accept", user=account("reviewer", "ann"))
    # disputed: left out
    review_model.decide([ids[3]], "bob", "reject", reason="stain or colour artefact", user=account("reviewer", "bob"))
    return result.dataset_id, ids


def _read(zip_path: Path) -> tuple[dict[str, zipfile.ZipInfo], list[dict[str, str]], zipfile.ZipFile]:
    zf = zipfile.ZipFile(zip_path)
    manifest = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    return {i.filename: i for i in zf.infolist()}, manifest, zf


def test_export_layout_manifest_and_hygiene(curated, tmp_path):
    dataset_id, ids = curated
    summary = export_curated_zip(dataset_id, tmp_path / "out" / "curated.zip", user=account())
    entries, manifest, zf = _read(summary.path)
    real = ds_db.real_images(dataset_id)
    assert summary.files == len(real) + 2 == len(manifest) and summary.candidates == 2
    assert set(entries) == {m["path"] for m in manifest} | {"manifest.csv"}
    assert list(manifest[0]) == list(MANIFEST_COLUMNS)
    by_origin = {o: [m for m in manifest if m["origin"] == o] for o in ("real", "synthetic")}
    # Candidates only in train, under their final class; val and test hold real cells only.
    cands = {m["path"]: m for m in by_origin["synthetic"]}
    assert {(m["split"], m["class"], m["intended_class"]) for m in cands.values()} == {
        ("train", "platelet", "platelet"), ("train", "lymphocyte", "platelet")}
    assert all(p.startswith(f"train/{m['class']}/cand_") for p, m in cands.items())
    for m in manifest:
        assert m["path"].split("/")[0] == m["split"]
        assert m["path"].split("/")[1] == m["class"]
    assert sorted(m["split"] for m in by_origin["real"]) == sorted(r.split for r in real)
    accepted = next(m for m in by_origin["synthetic"] if m["class"] == "platelet")
    assert (accepted["decisions"], accepted["consensus"], accepted["adjudicated"]) == (
        "ann:accept;bob:accept", "accepted", "")
    assert (accepted["checkpoint_step"], accepted["seed"], accepted["gan_run_id"]) == ("12", "7", "")
    relabelled = next(m for m in by_origin["synthetic"] if m["class"] == "lymphocyte")
    assert relabelled["decisions"] == "ann:relabel(lymphocyte)"
    # sha256 is of the exported bytes; images are stored as they are, the manifest is deflated.
    for m in manifest:
        assert hashlib.sha256(zf.read(m["path"])).hexdigest() == m["sha256"]
        assert entries[m["path"]].compress_type == zipfile.ZIP_STORED
    assert entries["manifest.csv"].compress_type == zipfile.ZIP_DEFLATED
    assert len({m["path"].rsplit("/", 1)[1] for m in manifest}) == len(manifest)  # unique file names
    assert summary.counts["train"]["lymphocyte"] == sum(r.split == "train" and r.class_name == "lymphocyte"
                                                        for r in real) + 1
    assert not (tmp_path / "out" / "curated.zip.tmp").exists()


def test_export_uses_the_stored_rule_adjudication_and_never_blind_cells(curated, tmp_path, monkeypatch):
    dataset_id, ids = curated
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    admin = auth.create_user("eve", "password1", "admin", user=account())
    review_model.enable_blind_test(dataset_id, "ann", fraction=0.3, seed=0, user=account())
    blind = [b["image_id"] for b in decisions_db.blind_items(dataset_id, "ann")]
    assert blind
    # accepted "candidates" that are really real val cells
    review_model.decide(blind, "ann", "accept", user=account("reviewer", "ann"))
    review_model.adjudicate([ids[3]], admin, "accept")
    rule = review_model.ConsensusRule(min_agreeing=2)
    review_model.set_review_settings(dataset_id, review_model.ReviewSettings(rule), admin)
    _, manifest, _ = _read(export_curated_zip(dataset_id, tmp_path / "a.zip", user=account()).path)
    cands = [m for m in manifest if m["origin"] == "synthetic"]
    # Under "2 agree" only ids[0] passes the vote; ids[3] is in by adjudication.
    assert sorted(m["decisions"] for m in cands) == ["ann:accept;bob:accept",
                                                     "ann:accept;bob:reject(stain or colour artefact)"]
    assert [m["adjudicated"] for m in cands if "bob:reject" in m["decisions"]] == ["eve:accept"]
    blind_rows = ds_db.images_by_ids(blind)
    blind_files = {f"real_{i:08d}" for i in blind}
    exported = {m["path"].rsplit("/", 1)[1].split(".")[0]: m for m in manifest}
    assert all(exported[name]["split"] == "val" and exported[name]["decisions"] == "" for name in blind_files)
    assert all(r.split == "val" for r in blind_rows)
    assert len([m for m in manifest if m["split"] == "train" and m["origin"] == "real"]) == len(
        ds_db.real_images(dataset_id, split="train"))


def test_export_needs_the_export_permission_and_all_files(curated, tmp_path, monkeypatch, wbc_home):
    dataset_id, ids = curated
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    viewer = auth.create_user("vic", "password1", "viewer", user=account())
    with pytest.raises(auth.PermissionDenied, match="viewer 'vic' may not export"):
        export_curated_zip(dataset_id, tmp_path / "v.zip", user=viewer)
    assert export_curated_zip(dataset_id, tmp_path / "r.zip",
                              user=auth.create_user("rita", "password1", "reviewer", user=account())).files > 0
    (wbc_home / ds_db.images_by_ids([ids[0]])[0].path).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        export_curated_zip(dataset_id, tmp_path / "m.zip", user=account())
    assert not (tmp_path / "m.zip").exists()


def _hf_rows(folder: Path) -> dict[str, list[dict[str, str]]]:
    return {split: list(csv.DictReader(open(folder / split / "metadata.csv", encoding="utf-8")))
            for split in ("train", "validation", "test")}


def test_hf_export_holds_the_zip_files_in_imagefolder_layout(curated, tmp_path):
    dataset_id, _ = curated
    zipped = export_curated_zip(dataset_id, tmp_path / "curated.zip", user=account())
    summary = export_curated_hf(dataset_id, tmp_path / "hf", user=account())
    assert (summary.files, summary.candidates, summary.counts) == (zipped.files, zipped.candidates, zipped.counts)
    assert sorted(p.name for p in summary.path.iterdir()) == ["README.md", "test", "train", "validation"]
    _, manifest, zf = _read(zipped.path)
    rows = _hf_rows(summary.path)
    assert all(list(r[0]) == list(HF_COLUMNS) for r in rows.values())
    by_sha = {m["sha256"]: m for m in manifest}
    split_name = {"train": "train", "val": "validation", "test": "test"}
    for split, split_rows in rows.items():
        for row in split_rows:
            data = (summary.path / split / row["file_name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
            m = by_sha[row["sha256"]]  # the same file, class and provenance as in the zip
            assert split_name[m["split"]] == split and m["path"] == f"{m['split']}/{row['file_name']}"
            assert zf.read(m["path"]) == data
            assert (row["label"], row["origin"], row["intended_class"], row["seed"]) == (
                m["class"], m["origin"], m["intended_class"], m["seed"])
            assert [row[c] for c in HF_TEXT_COLUMNS] == [m[c] or "none" for c in HF_TEXT_COLUMNS]
    assert {r["origin"] for r in rows["validation"] + rows["test"]} == {"real"}  # candidates only in train
    assert sum(len(r) for r in rows.values()) == summary.files
    card = (summary.path / "README.md").read_text()
    assert 'load_dataset("imagefolder"' in card and "lymphocyte" in card
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_curated_hf(dataset_id, tmp_path / "hf", user=account())
    assert not list(tmp_path.glob(".hf.*.tmp"))
    with pytest.raises(ValueError, match="one of zip, hf"):
        export_curated(dataset_id, tmp_path / "x", "parquet", user=account())


def test_hf_export_loads_with_one_line_of_datasets(curated, tmp_path):
    datasets = require_module("datasets", "it proves the Hugging Face layout loads")  # a dev dependency only
    dataset_id, _ = curated
    summary = export_curated(dataset_id, tmp_path / "hf", "hf", user=account())
    loaded = datasets.load_dataset("imagefolder", data_dir=str(summary.path), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation", "test"}
    assert {s: loaded[s].num_rows for s in loaded} == {
        {"val": "validation"}.get(s, s): sum(c.values()) for s, c in summary.counts.items()}
    train = loaded["train"]
    assert {"image", "label", "origin", "sha256"} <= set(train.features)
    assert train[0]["image"].size == (32, 32)
    assert sorted(train.filter(lambda r: r["origin"] == "synthetic")["label"]) == ["lymphocyte", "platelet"]
    assert set(loaded["test"]["decisions"]) == {"none"} and "ann:accept;bob:accept" in train["decisions"]


@pytest.mark.parametrize(("name", "safe"), [("band neutrophil", "band neutrophil"), ("../../etc", "_.._etc"),
                                            ("a/b\\c", "a_b_c"), ("...", "_"), ("IG (immature)", "IG _immature_")])
def test_safe_names(name, safe):
    assert safe_name(name) == safe


def test_cli_export(tiny_folder, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "WBC_HOME": str(home)}
    env.pop("WBC_DB_URL", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "wbc_core", "--json", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    assert cli("import", str(tiny_folder), "--name", "tiny", "--size", "32").returncode == 0
    out = cli("export", "--dataset", "tiny", "--out", str(tmp_path / "tiny.zip"))
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["files"] == 36 and payload["candidates"] == 0 and payload["path"] == str(tmp_path / "tiny.zip")
    with zipfile.ZipFile(tmp_path / "tiny.zip") as zf:
        assert len(zf.namelist()) == 37 and "manifest.csv" in zf.namelist()
    hf = cli("export", "--dataset", "tiny", "--out", str(tmp_path / "tiny_hf"), "--format", "hf")
    assert hf.returncode == 0, hf.stderr
    assert json.loads(hf.stdout)["files"] == 36 and (tmp_path / "tiny_hf" / "train" / "metadata.csv").is_file()
    bad = cli("export", "--dataset", "tiny", "--out", str(tmp_path / "x"), "--format", "tar")
    assert bad.returncode == 2 and "one of zip, hf" in bad.stderr
    missing = cli("export", "--dataset", "nope", "--out", str(tmp_path / "x.zip"))
    assert missing.returncode == 2 and "no dataset 'nope'" in missing.stderr


def test_manifest_keeps_each_real_cells_original_file_name(curated, tmp_path, tiny_folder):
    dataset_id, _ = curated
    _, manifest, _ = _read(export_curated_zip(dataset_id, tmp_path / "curated.zip", user=account()).path)
    real = [m for m in manifest if m["origin"] == "real"]
    originals = {p.name for p in tiny_folder.rglob("*.jpg")}
    assert {Path(m["original_name"]).name for m in real} == originals  # every imported file, once
    assert all(Path(m["original_name"]).parent.name == m["class"] for m in real)  # as it sat in its class folder
    assert {m["original_name"] for m in manifest if m["origin"] == "synthetic"} == {""}
