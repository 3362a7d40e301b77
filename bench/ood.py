"""Out-of-distribution checks on real PBC cells: the share flagged far, per image and per import (wbc_core.ood).

Builds a throw-away home, imports a seeded sample of PBC (per class) as the reference dataset "pbc", trains a
small_cnn on it through the app's classifier job (in this process), then measures:

* per image (the classifier's Mahalanobis score, threshold = 95th percentile of its real val cells): the share
  flagged far among PBC's own val and test cells, PBC cells the run never saw ("same lab"), the same cells with a
  stain shift (hue rotation + contrast, three strengths) and the demo drawings;
* per import (the reference judge's k-NN distance): the share beyond the reference's 95th percentile and whether
  the import would warn, for the same sets imported as datasets.

    .venv/bin/python bench/ood.py [--per-class 120] [--held-out 40] [--size 64] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHIFTS = {"mild": (0.04, 1.15), "medium": (0.10, 1.3), "strong": (0.25, 1.6)}  # (hue turn, contrast)


def shift_stain(image: Image.Image, hue: float, contrast: float) -> Image.Image:
    """Rotate the hue by `hue` of a turn and stretch the contrast around mid-grey."""
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(round(hue * 256))) % 256
    rgb = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), dtype=np.float64)
    rgb = np.clip((rgb - 127.5) * contrast + 127.5, 0, 255)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def sample_folders(source: Path, dest: Path, per_class: int, held_out: int, seed: int) -> dict[str, Path]:
    """A reference sample and a disjoint held-out sample ("same lab"), plus stain-shifted copies of the latter."""
    rng = random.Random(seed)
    out = {name: dest / name for name in ["pbc", "same_lab", *(f"stain_{k}" for k in SHIFTS)]}
    for cls in sorted(p.name for p in source.iterdir() if p.is_dir()):
        files = sorted((source / cls).glob("*.jpg"))
        rng.shuffle(files)
        for kind, chosen in (("pbc", files[:per_class]), ("same_lab", files[per_class:per_class + held_out])):
            (out[kind] / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (out[kind] / cls / f.name).write_bytes(f.read_bytes())
                if kind == "same_lab":
                    with Image.open(f) as im:
                        for level, (hue, contrast) in SHIFTS.items():
                            target = out[f"stain_{level}"] / cls / f"{f.stem}.png"
                            target.parent.mkdir(parents=True, exist_ok=True)
                            shift_stain(im, hue, contrast).save(target)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("WBC_PBC128", "/work/shared/data/pbc128"))
    p.add_argument("--per-class", type=int, default=120)
    p.add_argument("--held-out", type=int, default=40)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ood.json"))
    args = p.parse_args()

    from db import datasets as ds_db
    from db import users as users_db
    from wbc_core import context, importing, ood, results, store, worker
    from wbc_core.classifier import load_classifier
    from wbc_core.data.demo import write_demo_folder
    from wbc_core.jobs import groups

    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folders = sample_folders(Path(args.data), tmp / "cells", args.per_class, args.held_out, args.seed)
        folders["demo"] = write_demo_folder(tmp / "cells" / "demo", per_class=args.held_out, size=args.size, seed=3)
        for note in folders["demo"].glob("*.txt"):
            note.unlink()
        ctx = context.build("bench", home=tmp / "home")
        with context.using(ctx):
            admin = users_db.insert_user("admin", "", "admin", None, "local")
            importing.import_folder(folders["pbc"], "pbc", size=args.size, user=admin)
            config = {"model": "small_cnn", "epochs": args.epochs, "batch_size": 32, "num_threads": 2,
                      "device": "cpu", "schedule": "cosine"}
            run_id = groups.start_seeds("pbc", "real", [args.seed], config, launch=False, user=admin).run_ids[0]
            t0 = time.monotonic()
            assert worker.main(run_id) == 0
            train_s = time.monotonic() - t0
            from db import runs as runs_db

            run = runs_db.get_run(run_id)
            t0 = time.monotonic()
            loaded = load_classifier(results.checkpoint_path(run_id))
            calibration = ood.run_calibration(run_id, loaded)
            calibrate_s = time.monotonic() - t0
            per_image: dict[str, dict[str, float]] = {}
            ref = ds_db.get_dataset("pbc")
            for split in ("val", "test"):
                rows = ds_db.real_images(ref.id, split=split)
                scored = ood.score_images(loaded, store.images_for(ref.id, rows, args.size), calibration)
                per_image[f"pbc {split}"] = {"cells": len(rows), "far_share": float(scored["far"].mean()),
                                             "median_ratio": float(np.median(scored["ratio"]))}
            per_import: dict[str, dict[str, object]] = {}
            for name in ["same_lab", *(f"stain_{k}" for k in SHIFTS), "demo"]:
                importing.import_folder(folders[name], name, size=args.size, user=admin)
                info = ds_db.get_dataset(name)
                rows = ds_db.real_images(info.id)
                scored = ood.score_images(loaded, store.images_for(info.id, rows, args.size), calibration)
                per_image[name] = {"cells": len(rows), "far_share": float(scored["far"].mean()),
                                   "median_ratio": float(np.median(scored["ratio"]))}
                t0 = time.monotonic()
                shift = ood.dataset_shift(name, "pbc")
                per_import[name] = {k: shift[k] for k in ("cells", "share_far", "median_ratio", "looks_different")}
                per_import[name]["seconds"] = round(time.monotonic() - t0, 1)
        ctx.close()
    report = {"bench": "ood", "data": args.data, "per_class": args.per_class, "held_out_per_class": args.held_out,
              "size": args.size, "model": "small_cnn", "epochs": args.epochs,
              "test_macro_f1": (run.result.get("test") or {}).get("macro_f1"), "train_seconds": round(train_s, 1),
              "calibration_seconds": round(calibrate_s, 1), "far_threshold_percentile": ood.FAR_PERCENTILE,
              "looks_different_share": ood.LOOKS_DIFFERENT_SHARE, "shifts": SHIFTS,
              "per_image_far_share": per_image, "per_import": per_import,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load_before,
                          "load_after": os.getloadavg()},
              "seconds": round(time.monotonic() - started, 1)}
    Path(args.out).write_text(json.dumps(report, indent=2))
    for name, row in per_image.items():
        imp = per_import.get(name)
        extra = (f"   import: {imp['share_far']:.0%} beyond, warns={imp['looks_different']}" if imp else "")
        print(f"{name:<14} {row['cells']:>5} cells  far {row['far_share']:.0%}  median ratio "
              f"{row['median_ratio']:.2f}{extra}")
    print(f"test macro-F1 {report['test_macro_f1']}, {report['seconds']} s in all -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
