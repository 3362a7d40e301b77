"""Export the curated dataset as an ImageFolder zip with a provenance manifest, or as a Hugging Face folder.

Zip layout: train/<class>/ holds real train cells plus candidates accepted by consensus (or adjudication)
under their final class; val/<class>/ and test/<class>/ hold real cells only. manifest.csv has one row
per file: path, origin, original_name (a real cell's file name as imported; empty for candidates), class,
intended_class, split, sha256 (of the bytes in the zip), gan_run_id,
checkpoint_step, seed, decisions ("ann:accept;bob:reject(GAN texture artefact)"), consensus, adjudicated.

Hugging Face layout (the `imagefolder` builder of `datasets`): the same files in train/, validation/ and
test/, each split with a metadata.csv whose `file_name` is relative to it and whose `label` is the final
class, plus the manifest's provenance columns, and a README.md dataset card. It loads with one line:
`datasets.load_dataset("imagefolder", data_dir=FOLDER)`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db import datasets as ds_db
from db import decisions as decisions_db
from wbc_core.auth import User, authorize
from wbc_core.context import current
from wbc_core.review_model import ConsensusRule, consensus

MANIFEST_COLUMNS = ("path", "origin", "original_name", "class", "intended_class", "split", "sha256", "gan_run_id",
                    "checkpoint_step", "seed", "decisions", "consensus", "adjudicated")
EXPORT_FORMATS = ("zip", "hf")  # ImageFolder zip with manifest.csv; Hugging Face imagefolder folder
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # our split -> the name `datasets` expects
HF_COLUMNS = ("file_name", "label", *[c for c in MANIFEST_COLUMNS if c not in ("path", "class", "split")])
# `datasets` reads metadata.csv with pandas, split by split, and refuses splits whose column types differ: an
# empty text column (no decisions on real cells) would read as float NaN in validation but as text in train.
HF_TEXT_COLUMNS = ("original_name", "decisions", "consensus", "adjudicated")
HF_NONE = "none"  # what those columns hold where the zip's manifest is empty
# Already-compressed formats are stored as they are: deflating them again costs CPU and saves nothing.
STORED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
# A fixed entry time makes the zip a function of its content only (same data, same bytes).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
CHUNK = 1 << 16


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    path: Path  # the zip file
    files: int  # image files in the zip (manifest.csv not counted)
    candidates: int  # accepted candidates among them (all under train/)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> files
    size_bytes: int = 0  # size of the zip on disk


PERMISSION = "export"  # who may take the curated set out of the app (wbc_core.auth.PERMISSIONS)


def safe_name(name: str) -> str:
    """A folder name that is safe in any zip reader: no separators, no leading dots, nothing empty."""
    cleaned = re.sub(r"[^A-Za-z0-9._ -]+", "_", name).strip(" .") or "_"
    return cleaned[:100]


def _class_folders(class_names: list[str]) -> dict[str, str]:
    """Unique safe folder per class (two classes that clean to the same name get a numeric suffix)."""
    folders: dict[str, str] = {}
    used: set[str] = set()
    for name in class_names:
        base = folder = safe_name(name)
        n = 2
        while folder.lower() in used:  # case-insensitive: the zip may be unpacked on macOS or Windows
            folder = f"{base}_{n}"
            n += 1
        used.add(folder.lower())
        folders[name] = folder
    return folders


def _suffix(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""


def _decision_texts(dataset_id: int) -> tuple[dict[int, list[str]], dict[int, str]]:
    votes: dict[int, list[str]] = defaultdict(list)
    for row in decisions_db.current_decisions(dataset_id, origin="synthetic"):
        verdict = row["verdict"]
        detail = row["new_class"] if verdict == "relabel" else row["reason"]
        votes[row["image_id"]].append(f"{row['reviewer']}:{verdict}" + (f"({detail})" if detail else ""))
    rulings = {}
    for row in decisions_db.current_adjudications(dataset_id):
        detail = row["new_class"] if row["verdict"] == "relabel" else row["reason"]
        rulings[row["image_id"]] = f"{row['reviewer']}:{row['verdict']}" + (f"({detail})" if detail else "")
    return votes, rulings


def _plan(dataset_id: int, rule: ConsensusRule | None) -> list[dict[str, Any]]:
    """One entry per file to export, in a stable order, with its manifest fields."""
    info = ds_db.get_dataset(dataset_id)
    folders = _class_folders(info.class_names)
    outcomes = consensus(dataset_id, rule)
    votes, rulings = _decision_texts(dataset_id)
    plan = []
    for row in decisions_db.export_rows(dataset_id):
        if row["origin"] == "real":
            split, final = row["split"], row["class_name"]
            prefix = "real"
        else:
            outcome = outcomes.get(row["id"])
            if outcome is None or outcome.status != "accepted":
                continue
            # Science hygiene: a candidate only ever enters train; val and test stay real.
            split, final, prefix = "train", outcome.final_class, "cand"
        if final not in folders:
            folders.update(_class_folders([*folders, final]))  # a class outside the dataset's list
        name = f"{prefix}_{row['id']:08d}{_suffix(row['path'])}"  # ids are unique: so are the names
        outcome = outcomes.get(row["id"])
        plan.append({"source": current().home / row["path"], "path": f"{split}/{folders[final]}/{name}",
                     "origin": row["origin"], "class": final,
                     "original_name": (row.get("source") or "") if row["origin"] == "real" else "",
                     "intended_class": row["class_name"], "split": split,
                     "gan_run_id": row["gan_run_id"], "checkpoint_step": row["checkpoint_step"], "seed": row["seed"],
                     "decisions": ";".join(votes.get(row["id"], [])) if row["origin"] == "synthetic" else "",
                     "consensus": outcome.status if outcome and row["origin"] == "synthetic" else "",
                     "adjudicated": rulings.get(row["id"], "")})
    plan.sort(key=lambda p: p["path"])
    return plan


def _checked_plan(dataset_id: int, user: User, rule: ConsensusRule | None) -> list[dict[str, Any]]:
    """The plan after the permission check and the hygiene and file checks both formats share."""
    authorize(user, PERMISSION)
    plan = _plan(dataset_id, rule)
    bad = [p["path"] for p in plan if p["origin"] == "synthetic" and p["split"] != "train"]
    if bad:  # cannot happen by construction; refuse rather than leak candidates into evaluation
        raise ValueError(f"refusing to export candidates outside train: {bad[:5]}")
    missing = [str(p["source"]) for p in plan if not p["source"].is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image files are missing, e.g. {missing[0]}")
    return plan


def export_curated_zip(dataset_id: int, out_path: str | Path, *, user: User,
                       rule: ConsensusRule | None = None) -> ExportSummary:
    """Write the curated ImageFolder zip (rule: the dataset's stored consensus rule by default)."""
    out = Path(out_path)
    plan = _checked_plan(dataset_id, user, rule)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    counts: dict[str, Counter] = defaultdict(Counter)
    try:
        # Written beside the target and renamed at the end: a failed or interrupted export never
        # leaves a truncated zip under the requested name.
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for entry in plan:
                entry["sha256"] = _copy_into(zf, entry["source"], entry["path"])
                counts[entry["split"]][entry["class"]] += 1
            manifest = io.StringIO()
            writer = csv.DictWriter(manifest, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(plan)
            info = zipfile.ZipInfo("manifest.csv", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, manifest.getvalue())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportSummary(out, len(plan), sum(p["origin"] == "synthetic" for p in plan),
                         {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}, out.stat().st_size)


def _copy_into(zf: zipfile.ZipFile, source: Path, arcname: str) -> str:
    """Stream one file into the zip in chunks; return the sha256 of its bytes."""
    info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED if source.suffix.lower() in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.file_size = source.stat().st_size  # lets zipfile decide on ZIP64 before writing
    digest = hashlib.sha256()
    with open(source, "rb") as src, zf.open(info, "w") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def export_curated_hf(dataset_id: int, out_dir: str | Path, *, user: User,
                      rule: ConsensusRule | None = None) -> ExportSummary:
    """Write the curated set as a Hugging Face `imagefolder` folder (a new or empty out_dir); see the module doc."""
    authorize(user, PERMISSION)  # before anything about the target folder is told
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} already exists and is not an empty folder; give a new folder")
    plan = _checked_plan(dataset_id, user, rule)
    info = ds_db.get_dataset(dataset_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, Counter] = defaultdict(Counter)
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        # Built beside the target and renamed at the end, like the zip: never a half-written dataset.
        for entry in plan:
            split, rest = entry["path"].split("/", 1)
            target = tmp / HF_SPLITS[split] / rest
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = _copy_file(entry["source"], target)
            texts = {c: entry[c] or HF_NONE for c in HF_TEXT_COLUMNS}
            rows[HF_SPLITS[split]].append({**entry, **texts, "file_name": rest, "label": entry["class"],
                                           "sha256": digest})
            counts[split][entry["class"]] += 1
        for split, split_rows in rows.items():
            with open(tmp / split / "metadata.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=HF_COLUMNS, extrasaction="ignore", lineterminator="\n")
                writer.writeheader()
                writer.writerows(split_rows)
        (tmp / "README.md").write_text(_dataset_card(info.name, info.class_names, counts), encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return ExportSummary(out, len(plan), sum(p["origin"] == "synthetic" for p in plan),
                         {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}, size)


def export_curated(dataset_id: int, out_path: str | Path, fmt: str = "zip", *, user: User,
                   rule: ConsensusRule | None = None) -> ExportSummary:
    """The curated set in one of EXPORT_FORMATS: "zip" (ImageFolder zip) or "hf" (Hugging Face folder)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"the export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    writer = export_curated_zip if fmt == "zip" else export_curated_hf
    return writer(dataset_id, out_path, user=user, rule=rule)


def _copy_file(source: Path, target: Path) -> str:
    """Copy one file in chunks; return the sha256 of its bytes."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def _dataset_card(name: str, class_names: list[str], counts: dict[str, Counter]) -> str:
    """README.md of the Hugging Face export: what is in it and how to load it."""
    per_split = ", ".join(f"{HF_SPLITS[s]} {sum(c.values())}" for s, c in sorted(counts.items()))
    return "\n".join([
        "---", "task_categories:", "- image-classification", "tags:", "- white-blood-cells", "- synthetic-data",
        "---", f"# {name}: curated white-blood-cell set", "",
        f"Exported by wbc-curate. Images per split: {per_split}. Candidates (generated cells accepted by the "
        "reviewers) are only ever in train; validation and test hold real cells only.", "",
        "```python", "from datasets import load_dataset", "",
        "ds = load_dataset(\"imagefolder\", data_dir=\"path/to/this/folder\")",
        "ds = ds.class_encode_column(\"label\")  # optional: class names -> integer ids (sorted by name)", "```", "",
        "Columns of metadata.csv: " + ", ".join(f"`{c}`" for c in HF_COLUMNS) + ". `label` is the final class "
        "(after relabels), `origin` is real or synthetic, `original_name` is a real cell's file as imported, and the "
        "remaining columns record each candidate's "
        f"provenance (GAN run, checkpoint step, seed) and review (decisions, consensus, adjudication; `{HF_NONE}` "
        "where there is none, as for every real cell).", "",
        "Classes in the dataset's order: " + ", ".join(class_names) + ".", ""])
