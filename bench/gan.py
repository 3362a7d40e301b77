"""GAN benchmark on the real PBC cells: trainer speed vs the compute limit, then quality after a time budget.

    python bench/gan.py [--budget-minutes 20] [--quick] [--size 64] [--aux-weight 0.3 --lr-d 4e-4 --lr-g 1e-4]

Prints and saves bench/results/gan.json and gan.md (or gan_<tag>.* with --tag). The data is read from
../shared/data/pbc128 (WBC_PBC128 overrides), split 70/15/15 per class with a fixed seed, decoded once and
cached under WBC_HOME/cache/bench/. The judge (wbc_core.quality) is a small_cnn trained on up to
--judge-per-class real train cells per class (all train cells give the memorisation reference), cached too;
it never sees generated cells, so its acceptance rate is an independent check of class identity.
--budget-minutes is the GAN's training wall time; judge training, sampling and metrics come on top.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: the box is shared

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wbc_core.gan import GanConfig, compute_limit_sec_per_step, load_generator, sample_cells, train_gan  # noqa: E402
from wbc_core.quality.evaluate import compute_metrics, per_class_table  # noqa: E402
from wbc_core.quality.judge import QualityConfig, build_reference  # noqa: E402
from wbc_core.settings import cache_dir  # noqa: E402
from wbc_core.store import decode_many  # noqa: E402
from wbc_core.types import LabelledImages  # noqa: E402

GOALS = {"density": (">=", 0.8), "coverage": (">=", 0.7), "fd_ratio": ("<=", 3.0), "memorised": ("<", 0.01),
         "acceptance": (">=", 0.5)}
SPEED_GOAL = 1.15  # trainer s/step within 15% of the bare compute limit


def load_split(folder: Path, size: int, seed: int = 0) -> tuple[list[str], dict[str, LabelledImages], str]:
    """Class names, {"train", "val", "test"} tensors and a hash of the file list; decoded once, then cached."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = {c: sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
             for c in classes}
    digest = hashlib.sha256("".join(f"{c}/{p.name}\n" for c in classes for p in files[c]).encode()).hexdigest()[:12]
    cache = cache_dir() / "bench" / f"pbc_{size}_{digest}_seed{seed}.pt"
    if cache.is_file():
        return classes, {k: LabelledImages(*v) for k, v in torch.load(cache, weights_only=True).items()}, digest
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, tuple[list[Path], list[int]]] = {s: ([], []) for s in ("train", "val", "test")}
    for ci, c in enumerate(classes):
        order = torch.randperm(len(files[c]), generator=gen).tolist()
        n_val = n_test = round(0.15 * len(order))
        for split, idx in (("val", order[:n_val]), ("test", order[n_val:n_val + n_test]),
                           ("train", order[n_val + n_test:])):
            parts[split][0].extend(files[c][i] for i in idx)
            parts[split][1].extend([ci] * len(idx))
    data = {s: (decode_many(p, size), torch.tensor(y)) for s, (p, y) in parts.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return classes, {k: LabelledImages(*v) for k, v in data.items()}, digest


def judge_reference(classes, data, digest, size, qcfg):  # noqa: ANN001, ANN201
    judge_dir = cache_dir() / "judges" / f"bench_pbc_{size}_{digest}_{qcfg.key()}"
    return build_reference(data["train"], data["val"], classes, judge_dir, qcfg)


def goal_row(table: dict[str, dict[str, float]], group: str) -> dict[str, object]:
    row: dict[str, object] = {}
    for metric, (op, target) in GOALS.items():
        v = table.get(metric, {}).get(group)
        ok = None if v is None else (v >= target if op == ">=" else v <= target if op == "<=" else v < target)
        row[metric] = {"value": v, "goal": f"{op} {target}", "met": ok}
    return row


def markdown(result: dict) -> str:
    s = result["speed"]
    lines = [f"# GAN bench ({result['when']}, load average {result['load_average']})", "",
             f"config: `{json.dumps(result['overrides'])}` · {result['steps_done']} steps in "
             f"{result['train_seconds']:.0f} s · device {result['device']} · threads {result['threads']}", "",
             "| speed | s/step |", "|---|---|",
             f"| our trainer (incl. grids, checkpoints, EMA) | {s['trainer_sec_per_step']:.3f} |",
             f"| our trainer, steady log windows (median) | {s['trainer_steady_sec_per_step']:.3f} |",
             f"| compute limit (bare G/D step, preloaded; mean of before/after) | "
             f"{s['compute_limit_sec_per_step']:.3f} |",
             f"| ratio (goal <= {SPEED_GOAL}) | {s['ratio']:.2f} {'✅' if s['ratio'] <= SPEED_GOAL else '❌'} |", "",
             f"quality of {result['per_class']} cells per class from the final checkpoint "
             f"(judge val accuracy {result['judge_val_accuracy']:.3f}, TSTR accuracy "
             f"{result['metrics'].get('quality/tstr_accuracy', float('nan')):.3f}):", ""]
    header = ["group", *GOALS, "precision", "recall", "copy_ct"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = result["table"]
    for group in ["all", *result["classes"]]:
        cells = [group]
        for m in GOALS:
            v = table.get(m, {}).get(group)
            op, target = GOALS[m]
            met = None if v is None else (v >= target if op == ">=" else v <= target if op == "<=" else v < target)
            cells.append("–" if v is None else f"{v:.3f} {'✅' if met else '❌'}")
        cells += ["–" if table.get(m, {}).get(group) is None else f"{table[m][group]:.3f}"
                  for m in ("precision", "recall", "copy_ct")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "goals: " + ", ".join(f"{m} {op} {t}" for m, (op, t) in GOALS.items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-minutes", type=float, default=20.0, help="GAN training wall time")
    p.add_argument("--quick", action="store_true", help="~2 min smoke: 1 min of training, fewer cells")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--per-class", type=int, default=200, help="generated cells per class for the metrics")
    p.add_argument("--judge-per-class", type=int, default=400)
    p.add_argument("--aux-weight", type=float, default=None)
    p.add_argument("--lr-d", type=float, default=None)
    p.add_argument("--lr-g", type=float, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--tag", default="", help="suffix for the result files (gan_<tag>.json)")
    args = p.parse_args()
    budget_s = 60.0 if args.quick else args.budget_minutes * 60
    per_class = 50 if args.quick else args.per_class
    torch.set_num_threads(args.threads)
    folder = Path(os.environ.get("WBC_PBC128", ROOT.parent / "shared" / "data" / "pbc128"))
    classes, data, digest = load_split(folder, args.size)
    overrides = {k: v for k, v in {"aux_weight": args.aux_weight, "lr_d": args.lr_d, "lr_g": args.lr_g,
                                   "g_width": args.width, "d_width": args.width,
                                   "batch_size": args.batch}.items() if v is not None}
    config = GanConfig(image_size=args.size, steps=10**6, device="cpu", num_threads=args.threads,
                       checkpoint_every=500, sample_every=250, **overrides)
    limit = compute_limit_sec_per_step(data["train"], config, steps=5 if args.quick else 15)
    qcfg = QualityConfig(num_threads=args.threads, device="cpu", judge_epochs=3 if args.quick else 5,
                         judge_max_per_class=args.judge_per_class,
                         tstr_epochs=1 if args.quick else 3)
    t_judge = time.perf_counter()
    ref = judge_reference(classes, data, digest, args.size, qcfg)
    judge_s = time.perf_counter() - t_judge
    out_dir = cache_dir() / "bench" / f"run_{args.tag or 'default'}"
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run: stale checkpoints of an earlier bench must not linger
    deadline = time.monotonic() + budget_s
    windows: list[float] = []  # steady-state s/step of each log window (checkpoint/grid writes excluded)
    t0 = time.perf_counter()
    result = train_gan(data["train"], classes, config, out_dir, should_stop=lambda: time.monotonic() > deadline,
                       progress=lambda e: windows.append(e.metrics.get("sec_per_step", float("nan"))))
    train_s = time.perf_counter() - t0
    # The box is shared, so the compute limit is measured before and after training and averaged.
    limit = (limit + compute_limit_sec_per_step(data["train"], config, steps=5 if args.quick else 15)) / 2
    loaded = load_generator(result.last_checkpoint)
    cells = torch.cat([sample_cells(loaded, c, per_class, seed=900_001 + c) for c in range(len(classes))])
    labels = torch.arange(len(classes)).repeat_interleave(per_class)
    values = compute_metrics(ref, cells, labels, qcfg)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = {
        "when": time.strftime("%Y-%m-%d %H:%M"), "load_average": load.split("load average:")[-1].strip(),
        "uptime": load, "overrides": overrides, "size": args.size, "threads": args.threads, "device": result.device,
        "steps_done": result.steps_done, "train_seconds": train_s, "budget_seconds": budget_s,
        "judge_seconds": judge_s, "judge_val_accuracy": ref.judge.val_report.get("accuracy", float("nan")),
        "speed": {"trainer_sec_per_step": result.sec_per_step, "compute_limit_sec_per_step": limit,
                  "ratio": result.sec_per_step / limit,
                  "trainer_steady_sec_per_step": float(torch.tensor(windows[1:-1] or windows).nanmedian())},
        "per_class": per_class, "classes": classes, "metrics": values,
        "table": per_class_table(values, classes),
        "goals": {g: goal_row(per_class_table(values, classes), g) for g in ["all", *classes]},
    }
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = f"gan_{args.tag}" if args.tag else ("gan_quick" if args.quick else "gan")
    (results / f"{stem}.json").write_text(json.dumps(out, indent=2, default=float))
    md = markdown(out)
    (results / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
