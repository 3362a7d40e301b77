"""CLI for offline quality metrics: of any folder of cells, of a GAN checkpoint, and candidate scoring.

Loaded by wbc_core.cli through EXTENSION_MODULES: register(subparsers) adds the commands and COMMANDS maps
each name to handler(args) -> dict (printed as JSON with --json; "_text" is the human form).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the main parser."""
    s = sub.add_parser("quality", help="quality metrics (FD ratio, density/coverage, P/R, memorisation, TSTR) "
                                       "of a folder of cells or of a GAN checkpoint")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", help="folder with one subfolder per class (needs --dataset)")
    what.add_argument("--run", type=int, help="GAN run: sample from its checkpoint and store the metrics")
    s.add_argument("--dataset", help="dataset whose real train/val cells are the reference (with --images)")
    s.add_argument("--size", type=int, default=None, help="image size for --images (default: the dataset's)")
    s.add_argument("--step", type=int, default=None, help="checkpoint step for --run (default: the newest)")
    s.add_argument("--per-class", type=int, default=64, help="cells sampled per class for --run")
    s.add_argument("--detach", action="store_true", help="with --run: queue the job and return at once")

    s = sub.add_parser("score-candidates", help="(re)score candidates with the judge for review sorting")
    s.add_argument("--dataset", required=True)
    s.add_argument("--run", type=int, default=None, help="only this GAN run's candidates")
    s.add_argument("--detach", action="store_true", help="queue the job and return at once")


def _text(values: dict[str, float], class_names: list[str], head: str) -> str:
    from wbc_core.quality.evaluate import per_class_table
    from wbc_core.quality_views import verdict

    table = per_class_table(values, class_names)
    columns = ["all", *class_names]
    lines = [head, f"{'metric':<15}" + "".join(f"{c[:11]:>12}" for c in columns)]
    for metric, row in table.items():
        lines.append(f"{metric:<15}" + "".join(f"{row[c]:>12.3f}" if c in row else f"{'':>12}" for c in columns))
    lines.append("verdict: " + verdict(values))
    return "\n".join(lines)


def _quality(args: argparse.Namespace) -> dict[str, Any]:
    from db.datasets import get_dataset

    if args.run is not None:
        from db import runs
        from wbc_core.cli.main import _follow, acting_user
        from wbc_core.generation import start_quality
        from wbc_core.quality_views import verdict

        user = acting_user(args)
        out = _follow(start_quality(args.run, step=args.step, per_class=args.per_class, user=user), args.detach,
                      "quality", user)
        if out.get("status") != "succeeded":
            return out
        info = get_dataset(runs.get_run(args.run).dataset_id)
        head = f"run {args.run} step {out['step']} ({args.per_class} per class); stored as run metrics"
        return {**out, "verdict": verdict(out["metrics"]), "_text": _text(out["metrics"], info.class_names, head)}
    if not args.dataset:
        raise ValueError("--images needs --dataset (its real cells are the reference)")
    from wbc_core.judges import dataset_reference
    from wbc_core.quality.evaluate import compute_metrics, read_folder
    from wbc_core.quality_views import verdict

    info = get_dataset(args.dataset)
    size = args.size or info.image_size
    # Progress on stderr, one step at a time: the first call for a dataset trains its judge (minutes on a CPU).
    bar = tqdm(total=5, file=sys.stderr, bar_format="quality {n}/{total} [{elapsed}] {desc}")
    started = [False]

    def stage(text: str) -> None:
        if started[0]:
            bar.update(1)
        started[0] = True
        bar.set_description_str(text, refresh=True)

    try:
        stage(f"reading the cells of {args.images}")
        cells = read_folder(Path(args.images), info.class_names, size)
        stage(f"reference: real train/val cells of {info.name!r} and the judge (trained once per dataset and "
              "size, a few CPU minutes, then cached)")
        ref = dataset_reference(info.id, size)
        values = compute_metrics(ref, cells.images, cells.labels, stage=stage)
        bar.update(bar.total - bar.n)
        bar.set_description_str("done", refresh=True)
    finally:
        bar.close()
    head = f"{len(cells)} cells from {args.images} vs dataset {info.name!r} at {size} px"
    return {"dataset": info.name, "images": str(args.images), "size": size, "cells": len(cells),
            "judge": str(ref.judge_dir), "metrics": values, "verdict": verdict(values),
            "_text": _text(values, info.class_names, head)}


def _score_candidates(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.cli.main import _follow, acting_user
    from wbc_core.generation import start_scoring

    user = acting_user(args)
    out = _follow(start_scoring(args.dataset, args.run, user=user), args.detach, "scoring", user)
    if out.get("status") == "succeeded":
        out["_text"] = f"scored {out.get('scored', 0)} candidates"
    return out


COMMANDS = {"quality": _quality, "score-candidates": _score_candidates}
