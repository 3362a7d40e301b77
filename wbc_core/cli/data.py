"""CLI for datasets: import a folder or zip, a BloodMNIST .npz, the demo, and list what is there.

Loaded by wbc_core.cli.main through EXTENSION_MODULES: register(subparsers) adds the commands and COMMANDS maps
each name to handler(args) -> dict (printed as JSON with --json; "_text" is the human form).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from wbc_core.cli.main import acting_user


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the main parser."""
    s = sub.add_parser("import", help="import a folder or zip with one subfolder per class")
    s.add_argument("source")
    s.add_argument("--name", required=True)
    s.add_argument("--size", type=int, default=64, help="working image size: 32, 64 or 128")
    s.add_argument("--seed", type=int, default=0, help="seed of the stratified train/val/test split")
    s.add_argument("--val", type=float, default=0.15, help="fraction of each class for validation")
    s.add_argument("--test", type=float, default=0.15, help="fraction of each class for testing")
    s.add_argument("--reference", default=None, metavar="DATASET",
                   help="dataset the new cells are compared with after the import (default: the biggest real one)")

    s = sub.add_parser("import-npz", help="import a BloodMNIST .npz keeping its official split")
    s.add_argument("file")
    s.add_argument("--name", required=True)
    s.add_argument("--size", type=int, default=64)

    s = sub.add_parser("download", help="download a public dataset (needs internet)")
    s.add_argument("dataset", choices=["bloodmnist"])
    s.add_argument("--size", type=int, default=64, choices=[28, 64, 128, 224])
    s.add_argument("--name", default=None)

    s = sub.add_parser("demo", help="create the built-in demo dataset (drawn cell-like images, not real cells)")
    s.add_argument("--name", default="demo")
    s.add_argument("--per-class", type=int, default=60)
    s.add_argument("--size", type=int, default=64)

    sub.add_parser("datasets", help="list datasets with class counts")


def _import(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.data import SplitConfig
    from wbc_core.importing import import_folder

    if args.reference:
        from wbc_core.catalog import get_dataset

        get_dataset(args.reference)  # an unknown reference is refused before anything is imported
    bar = tqdm(desc="importing", unit="file", disable=None, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = import_folder(args.source, args.name, size=args.size,
                               split=SplitConfig(val_fraction=args.val, test_fraction=args.test, seed=args.seed),
                               progress=progress, user=acting_user(args))
    finally:
        bar.close()
    from wbc_core.import_jobs import compare_with_reference

    # Like the import job: compare the new cells with the biggest real dataset (or --reference) in plain words.
    shift = compare_with_reference(result.dataset_id, args.reference, lambda m: print(m, file=sys.stderr))
    text = result.summary + (f"\n\nWARNING: {shift['message']}" if shift.get("looks_different") else "")
    return {**_import_payload(result), "distribution": shift, "_text": text}


def _import_payload(result) -> dict[str, Any]:  # noqa: ANN001
    return {"dataset_id": result.dataset_id, "name": result.name, "kind": result.kind,
            "classes": result.class_counts, "skipped": result.report["skipped"],
            "converted": result.report["converted"], "empty_classes": result.report["empty_classes"],
            "seconds": result.seconds}


def _import_npz(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.importing import import_bloodmnist

    result = import_bloodmnist(args.file, args.name, size=args.size, user=acting_user(args))
    return {**_import_payload(result), "_text": result.summary}


def _download(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.importing import download_bloodmnist

    result = download_bloodmnist(args.name or f"bloodmnist-{args.size}", size=args.size, user=acting_user(args))
    return {**_import_payload(result), "_text": result.summary}


def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.importing import import_demo

    result = import_demo(args.name, per_class=args.per_class, size=args.size, user=acting_user(args))
    text = f"Created demo dataset {result.name!r} (procedurally drawn cell-like images, NOT real cells).\n"
    return {**_import_payload(result), "demo": True, "_text": text + result.summary}


def _datasets(_args: argparse.Namespace) -> dict[str, Any]:
    from db.datasets import list_datasets
    from wbc_core.importing import class_split_counts

    items = [{"id": d.id, "name": d.name, "kind": d.kind, "image_size": d.image_size,
              "classes": class_split_counts(d.id)} for d in list_datasets()]
    text = "\n".join(f"{d['id']:>4}  {d['name']:<24} {d['kind']:<10} {len(d['classes'])} classes" for d in items)
    return {"datasets": items, "_text": text or "no datasets yet: try `python -m wbc_core demo`"}


COMMANDS = {"import": _import, "import-npz": _import_npz, "download": _download, "demo": _demo,
            "datasets": _datasets}
