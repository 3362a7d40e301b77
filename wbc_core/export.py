"""Export the curated dataset as an ImageFolder zip with a provenance manifest.

Layout: train/<class>/ holds real train cells plus candidates accepted by consensus (or adjudication)
under their final class; val/<class>/ and test/<class>/ hold real cells only. manifest.csv has one row
per file: path, origin, class, intended_class, split, sha256 (of the bytes in the zip), gan_run_id,
checkpoint_step, seed, decisions ("ann:accept;bob:reject(GAN texture artefact)"), consensus, adjudicated.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
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

MANIFEST_COLUMNS = ("path", "origin", "class", "intended_class", "split", "sha256", "gan_run_id",
                    "checkpoint_step", "seed", "decisions", "consensus", "adjudicated")
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
                     "origin": row["origin"], "class": final, "intended_class": row["class_name"], "split": split,
                     "gan_run_id": row["gan_run_id"], "checkpoint_step": row["checkpoint_step"], "seed": row["seed"],
                     "decisions": ";".join(votes.get(row["id"], [])) if row["origin"] == "synthetic" else "",
                     "consensus": outcome.status if outcome and row["origin"] == "synthetic" else "",
                     "adjudicated": rulings.get(row["id"], "")})
    plan.sort(key=lambda p: p["path"])
    return plan


def export_curated_zip(dataset_id: int, out_path: str | Path, user: User | None = None,
                       rule: ConsensusRule | None = None) -> ExportSummary:
    """Write the curated ImageFolder zip (rule: the dataset's stored consensus rule by default)."""
    if user is not None:
        authorize(user, "export")
    out = Path(out_path)
    plan = _plan(dataset_id, rule)
    bad = [p["path"] for p in plan if p["origin"] == "synthetic" and p["split"] != "train"]
    if bad:  # cannot happen by construction; refuse rather than leak candidates into evaluation
        raise ValueError(f"refusing to export candidates outside train: {bad[:5]}")
    missing = [str(p["source"]) for p in plan if not p["source"].is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image files are missing, e.g. {missing[0]}")
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
