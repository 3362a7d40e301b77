"""Does compiling change what the classifier learns? The default recipe trained eager and compiled, same seeds.

    python bench/compile_accuracy.py [--data ../shared/data/pbc128] [--epochs 15] [--seeds 0 1] [--modes off on nchw]
                                     [--tag NAME]

For each seed, the default recipe (ClassifierConfig defaults at 64 px, real train cells only) trains once per mode,
in turn (so load from other users falls on all alike), and each run's best-val checkpoint is scored on the real test
split. Modes: "off" (eager) and "on" (compiled) train in the layout this CPU kind measured fastest
(wbc_core.compile.MEASURED: NHWC on AVX2 and AVX-512); "nchw" trains eager in NCHW, the layout of every run before
NHWC became the default. Reports test macro-F1 and accuracy per run, the mean per mode, the run-to-run spread within
a mode (max - min over seeds), the compiled - eager and the NHWC - NCHW differences (mean and per seed), and each
run's wall time including the compile warm-up: the issue's goal is "same test macro-F1 within run-to-run spread
(+-0.5 points)" and "never slower than eager". The first compiled run pays a cold inductor cache, the later ones a
warm one (the bench's own cache folder under --cache), as a lab's second run would.
Writes bench/results/compile_accuracy[_TAG].json (after every run, with "partial": true until the end) and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# mode -> (ClassifierConfig.compile, train in NCHW whatever the measured layout)
MODES = {"off": ("off", False), "on": ("on", False), "nchw": ("off", True)}
GOAL_POINTS = 0.5  # the tolerance on test macro-F1, in points


def _paired(by_mode: dict[str, dict[int, dict[str, Any]]], base: str, other: str) -> dict[str, Any]:
    """other - base in test macro-F1 points per paired seed and on average, judged against the issue's 0.5 points
    and the larger run-to-run spread of the two modes; {} until a seed has run in both."""
    paired = sorted(set(by_mode.get(base, {})) & set(by_mode.get(other, {})))
    if not paired:
        return {}
    a, b = by_mode[base], by_mode[other]
    deltas = [100 * (b[s]["test_macro_f1"] - a[s]["test_macro_f1"]) for s in paired]
    spreads = [100 * (max(r["test_macro_f1"] for r in runs.values()) - min(r["test_macro_f1"] for r in runs.values()))
               for runs in (a, b)]
    mean_delta = statistics.mean(deltas)
    return {"paired_seeds": paired, "delta_per_seed": [round(d, 2) for d in deltas],
            "delta_mean_points": round(mean_delta, 2), "run_to_run_spread_points": round(max(spreads), 2),
            "within_goal": abs(mean_delta) <= GOAL_POINTS,
            "wall_ratio": round(sum(a[s]["wall_s"] for s in paired) / sum(b[s]["wall_s"] for s in paired), 3)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-mode mean/spread of test macro-F1 (points); compiled - eager ("on" - "off", at the top level) and the
    layout's own difference ("off" - "nchw", under "layout") per seed and on average, with wall-time ratios."""
    by_mode: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        by_mode.setdefault(r["compile"], {})[r["seed"]] = r
    out: dict[str, Any] = {"modes": {}}
    for mode, seeds in by_mode.items():
        f1 = [100 * r["test_macro_f1"] for r in seeds.values()]
        out["modes"][mode] = {"runs": len(f1), "test_macro_f1_mean": round(statistics.mean(f1), 2),
                              "spread_points": round(max(f1) - min(f1), 2),
                              "wall_s_mean": round(statistics.mean(r["wall_s"] for r in seeds.values()), 1)}
    compiled = _paired(by_mode, "off", "on")
    if compiled:
        out.update({k: v for k, v in compiled.items() if k != "wall_ratio"},
                   wall_ratio_eager_over_compiled=compiled["wall_ratio"])
    layout = _paired(by_mode, "nchw", "off")
    if layout:
        out["layout"] = {**{k: v for k, v in layout.items() if k != "wall_ratio"},
                         "wall_ratio_nchw_over_default": layout["wall_ratio"]}
    return out


@contextlib.contextmanager
def nchw_plans(force: bool) -> Iterator[None]:
    """While active (force=True), the classifier's speed plans train in NCHW whatever this CPU kind measured: the
    reference arm of the layout comparison. The plan's record says so, so the run still describes itself."""
    from wbc_core.classifier import train as classifier_train

    if not force:
        yield
        return
    measured_plan = classifier_train.speed_plan

    def nchw_plan(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - a wbc_core.compile.CompilePlan
        plan = measured_plan(*args, **kwargs)
        plan.channels_last = False
        plan.notes.append("NCHW forced by bench/compile_accuracy.py (the layout comparison's reference)")
        return plan

    classifier_train.speed_plan = nchw_plan
    try:
        yield
    finally:
        classifier_train.speed_plan = measured_plan


def train_one(cells: Any, size: int, epochs: int, seed: int, mode: str) -> dict[str, Any]:
    """One default-recipe run; returns its test scores, wall time and the run's own speed record."""
    from wbc_core import options
    from wbc_core.classifier import evaluate, train_classifier
    from wbc_core.types import LabelledImages

    request, force_nchw = MODES[mode]
    config = options.classifier_config(size, {"epochs": epochs, "seed": seed, "compile": request})

    def part(name: str) -> LabelledImages:
        idx = [i for i, s in enumerate(cells.splits) if s == name]
        return LabelledImages(cells.images[idx], cells.labels[idx])

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, nchw_plans(force_nchw):
        result = train_classifier(part("train"), part("val"), cells.class_names, config, Path(tmp))
        report = evaluate(result.checkpoint, part("test"), cells.class_names, device=result.device)
    return {"compile": mode, "seed": seed, "epochs": epochs, "wall_s": round(time.perf_counter() - t0, 1),
            "train_seconds": round(result.seconds, 1), "best_epoch": result.best_epoch, "speed": result.speed,
            "val_macro_f1": round(result.val["macro_f1"], 4), "test_accuracy": round(report["accuracy"], 4),
            "test_macro_f1": round(report["macro_f1"], 4)}


def markdown(out: dict[str, Any]) -> str:
    s, cpu = out["summary"], out["machine"]["cpu"]
    lines = [f"# Compiled vs eager classifier: accuracy ({out['date']})", "",
             f"CPU {cpu['model']} (torch ISA {cpu['torch_cpu_capability']}, AVX512-BF16 {cpu['avx512_bf16']}), "
             f"torch {cpu['torch']}; default recipe at {out['size']} px, {out['epochs']} epochs, seeds {out['seeds']}; "
             f"load during {out['loads']}." + (" **Partial.**" if out["partial"] else ""), "",
             "| compile | seed | test macro-F1 | test accuracy | best epoch | wall s (incl. warm-up) | compiled? |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in out["runs"]:
        lines.append(f"| {r['compile']} | {r['seed']} | {100 * r['test_macro_f1']:.2f} | "
                     f"{100 * r['test_accuracy']:.2f} | {r['best_epoch']} | {r['wall_s']} | "
                     f"{r['speed']['reason']}{'; ' + '; '.join(r['speed']['notes']) if r['speed']['notes'] else ''} |")
    lines += ["", "| mode | runs | mean test macro-F1 | spread (max - min) | mean wall s |",
              "|---|---:|---:|---:|---:|"]
    for mode, m in s["modes"].items():
        lines.append(f"| {mode} | {m['runs']} | {m['test_macro_f1_mean']} | {m['spread_points']} | "
                     f"{m['wall_s_mean']} |")
    if "delta_mean_points" in s:
        lines += ["", f"compiled - eager: **{s['delta_mean_points']:+.2f} points** (per seed "
                  f"{s['delta_per_seed']}), run-to-run spread {s['run_to_run_spread_points']} points; goal "
                  f"|delta| <= {GOAL_POINTS}: **{'met' if s['within_goal'] else 'missed'}**. Wall time eager / "
                  f"compiled: {s['wall_ratio_eager_over_compiled']}x."]
    if "layout" in s:
        lay = s["layout"]
        lines += ["", f"default layout - NCHW (eager both): **{lay['delta_mean_points']:+.2f} points** (per seed "
                  f"{lay['delta_per_seed']}), run-to-run spread {lay['run_to_run_spread_points']} points; goal "
                  f"|delta| <= {GOAL_POINTS}: **{'met' if lay['within_goal'] else 'missed'}**. Wall time NCHW / "
                  f"default: {lay['wall_ratio_nchw_over_default']}x."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from wbc_core.classifier import ClassifierConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "pbc128"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=ClassifierConfig().epochs)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["off", "on"],
                   help="off: eager, on: compiled (both in the measured layout), nchw: eager in NCHW")
    p.add_argument("--tag", default="")
    p.add_argument("--cache", default=str(ROOT / "wbc_data" / "cache" / "bench"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        raise SystemExit(f"no data folder {data}: pass --data with the PBC folder (see ../shared/data/README.md)")
    import torch._inductor.config as inductor_config

    from bench.ceiling import cpu_description
    from bench.cells import load_cells
    from bench.loop_support import machine

    # The compiled runs share one inductor cache in the bench's cache folder: the first is cold, the rest warm.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(args.cache) / "inductor_compile_accuracy"))
    inductor_config.fx_graph_cache = True
    cells = load_cells(data, args.size, cache_dir=Path(args.cache))
    name = "compile_accuracy" + (f"_{args.tag}" if args.tag else "")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "machine": {**machine(), "cpu": cpu_description()},
                           "size": args.size, "epochs": args.epochs, "seeds": args.seeds, "partial": True,
                           "runs": [], "loads": []}
    plan = [(seed, mode) for seed in args.seeds for mode in args.modes]
    started = time.monotonic()
    for i, (seed, mode) in enumerate(plan):
        out["loads"].append(round(os.getloadavg()[0], 2))
        run = train_one(cells, args.size, args.epochs, seed, mode)
        out["runs"].append(run)
        out["summary"] = summarise(out["runs"])
        out["partial"] = i + 1 < len(plan)
        (folder / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
        (folder / f"{name}.md").write_text(markdown(out))
        eta = (time.monotonic() - started) / (i + 1) * (len(plan) - i - 1)
        print(f"[{i + 1}/{len(plan)}] compile={mode} seed={seed}: test macro-F1 {100 * run['test_macro_f1']:.2f}, "
              f"{run['wall_s']:.0f} s ({run['speed']['reason']}); ETA {eta / 60:.0f} min", flush=True)
    print(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
