"""CLI commands for classifier results: ablation, multi-seed training, comparison, predict, model export."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from wbc_core.cli import add_compile_flag
from wbc_core.vocabulary import RECIPES


def _training_flags(s: argparse.ArgumentParser) -> None:
    """The ClassifierConfig choices a user may set, shared by ablation and train-seeds."""
    s.add_argument("--dataset", required=True)
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--model", default=None, help="resnet18 (default), small_cnn or any torchvision model name")
    s.add_argument("--batch", type=int, default=None)
    s.add_argument("--optimizer", choices=["adamw", "sgd"], default=None, help="sgd = nesterov, momentum 0.9")
    s.add_argument("--lr", type=float, default=None, help="peak learning rate")
    s.add_argument("--weight-decay", type=float, default=None)
    s.add_argument("--label-smoothing", type=float, default=None)
    s.add_argument("--schedule", choices=["onecycle", "cosine"], default=None)
    s.add_argument("--augment", default=None, help="augmentation preset: geometric (default: flips, 90° rotations), "
                   "cell (plus mild colour jitter) or none")
    s.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="draw every class equally often (default off)")
    s.add_argument("--patience", type=int, default=None, help="early stopping patience in epochs (0 = off)")
    s.add_argument("--val-every", type=int, default=None,
                   help="validate every N epochs and after the last (default 1); the best weights are chosen among "
                        "the validated epochs")
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    s.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision + channels_last: CUDA AMP, CPU bf16 where native (default on)")
    s.add_argument("--pretrained", default=None, help="local state dict / wbc checkpoint to start from")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (0 = torch default)")
    add_compile_flag(s, "the training step")
    s.add_argument("--synthetic-cap", type=float, default=None, help="max synthetic per class, x real count")
    s.add_argument("--detach", action="store_true", help="start the runs and return at once")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the main parser."""
    s = sub.add_parser("ablation", help="real vs curated vs all-synthetic, same seed(s) and settings, in sequence")
    _training_flags(s)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds: every arm once per seed")

    s = sub.add_parser("train-seeds", help="one recipe with several seeds, grouped (mean ± std)")
    _training_flags(s)
    s.add_argument("--recipe", default="real", choices=RECIPES)
    s.add_argument("--seeds", type=int, nargs="+", required=True)

    s = sub.add_parser("compare", help="test metrics with 95%% CIs, per-class F1 and deltas against a baseline")
    s.add_argument("--runs", type=int, nargs="+", required=True)
    s.add_argument("--baseline", type=int, default=None, help="run to compare against (default: none)")

    s = sub.add_parser("predict", help="classify image files with a model.pt, an exported TorchScript or ONNX file")
    s.add_argument("--model", required=True)
    s.add_argument("--abstain-above", type=float, default=None, metavar="X",
                   help="answer 'abstain' for images whose out-of-distribution ratio exceeds X (1 = the far threshold "
                        "calibrated on the model's real val cells; checkpoints only)")
    s.add_argument("images", nargs="+")

    s = sub.add_parser("evaluate", help="score a finished classifier run on another dataset's real cells, with the "
                                        "share of cells far from its training cells (a job)")
    s.add_argument("--run", type=int, required=True, help="a finished classifier run")
    s.add_argument("--dataset", required=True, help="the dataset to evaluate it on")
    s.add_argument("--abstain-above", type=float, default=None, metavar="X",
                   help="also report the scores without the cells whose out-of-distribution ratio exceeds X")
    s.add_argument("--detach", action="store_true", help="start the job and return at once")

    s = sub.add_parser("export-model", help="write a run's checkpoint, TorchScript file, ONNX file and class map")
    s.add_argument("--run", type=int, required=True)
    s.add_argument("--out", required=True)

    s = sub.add_parser("cancel-group", help="ask every active run of an ablation or multi-seed group to stop")
    s.add_argument("group")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {"epochs": args.epochs, "model": args.model, "batch_size": args.batch, "optimizer": args.optimizer,
              "lr": args.lr, "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing,
              "schedule": args.schedule, "augment": args.augment, "balanced_sampling": args.balanced,
              "early_stopping_patience": args.patience, "val_every": args.val_every, "device": args.device,
              "amp": args.amp,
              "pretrained_path": args.pretrained, "num_threads": args.threads, "compile": args.compile}
    return {k: v for k, v in values.items() if v is not None}


def _ablation(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.cli.main import acting_user
    from wbc_core.jobs.groups import start_ablation

    user = acting_user(args)
    seeds = args.seeds if args.seeds else [args.seed if args.seed is not None else 0]
    launched = start_ablation(args.dataset, _overrides(args), seeds, synthetic_cap=args.synthetic_cap, user=user)
    return _follow_group(launched.group_name, launched.run_ids, args.detach, user)


def _train_seeds(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.cli.main import acting_user
    from wbc_core.jobs.groups import start_seeds

    user = acting_user(args)
    launched = start_seeds(args.dataset, args.recipe, args.seeds, _overrides(args), synthetic_cap=args.synthetic_cap,
                           user=user)
    return _follow_group(launched.group_name, launched.run_ids, args.detach, user)


def _follow_group(group: str, run_ids: list[int], detach: bool, user: Any) -> dict[str, Any]:  # noqa: ANN401
    """Follow a group's runs one after another with one progress bar, then summarise them."""
    from db import runs
    from wbc_core import jobs
    from wbc_core.jobs.groups import cancel_group

    if not detach:
        bar = tqdm(total=1000 * len(run_ids), desc=group, disable=None, file=sys.stderr,
                   bar_format="{l_bar}{bar}| {postfix}")
        try:
            for i, run_id in enumerate(run_ids):
                def on_poll(info: runs.RunInfo, i: int = i) -> None:
                    bar.n = 1000 * i + int(info.progress_fraction * 1000)
                    bar.set_postfix_str(f"run {info.id} ({info.recipe}, seed {info.seed}) "
                                        f"{info.progress_message[:50]}", refresh=True)

                jobs.wait(run_id, on_poll=on_poll)
        except KeyboardInterrupt:
            cancel_group(group, user)
            print(f"\ncancelling group {group}", file=sys.stderr)
            for run_id in run_ids:
                jobs.wait(run_id, timeout=120)
        finally:
            bar.close()
    return _group_payload(group, run_ids, detach)


def _group_payload(group: str, run_ids: list[int], detach: bool) -> dict[str, Any]:
    from db import runs
    from wbc_core import results

    infos = [runs.get_run(r) for r in run_ids]
    items = []
    for info in infos:
        test = info.result.get("test") or {}
        items.append({"id": info.id, "recipe": info.recipe, "seed": info.seed, "status": info.status,
                      "train_set_hash": info.train_set_hash, "test_accuracy": test.get("accuracy"),
                      "test_macro_f1": test.get("macro_f1"), "ci": test.get("ci")})
    statuses = {i["status"] for i in items}
    status = "failed" if "failed" in statuses else "succeeded" if statuses == {"succeeded"} else (
        "running" if detach else "cancelled")
    arms = results.group_summary(groups=[group])
    lines = [f"group {group}: runs {', '.join(map(str, run_ids))} ({status})"]
    if detach:
        lines.append(f"training one after another; follow with `python -m wbc_core runs`, "
                     f"stop with `python -m wbc_core cancel-group {group}`")
    for a in arms:
        std = f" ± {a['macro_f1_std']:.4f}" if a["macro_f1_std"] is not None else ""
        lines.append(f"  {a['recipe']:<13} n={a['n']}  macro-F1 {a['macro_f1_mean']:.4f}{std}  "
                     f"accuracy {a['accuracy_mean']:.4f}")
    return {"group": group, "run_ids": run_ids, "status": status, "runs": items, "arms": arms,
            "_text": "\n".join(lines)}


def _cancel_group(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.cli.main import acting_user
    from wbc_core.jobs.groups import cancel_group

    ids = cancel_group(args.group, acting_user(args))
    return {"group": args.group, "cancel_requested": ids,
            "_text": f"asked runs {', '.join(map(str, ids))} to stop" if ids else f"no active run in {args.group}"}


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n/a]"


def _compare(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.results import compare_runs

    out = compare_runs(args.runs, args.baseline)
    lines = [f"{'run':>5} {'recipe':<13} {'seed':>4}  {'accuracy [95% CI]':<26} {'macro-F1 [95% CI]':<26} "
             f"Δ macro-F1 vs baseline [paired 95% CI]"]
    for r in out["runs"]:
        acc = f"{r['accuracy']:.4f} {_ci(r['accuracy_ci'])}" if r["accuracy"] is not None else "n/a"
        f1 = f"{r['macro_f1']:.4f} {_ci(r['macro_f1_ci'])}" if r["macro_f1"] is not None else "n/a"
        delta = ((r.get("delta_vs_baseline") or {}).get("macro_f1")) or {}
        d = f"{delta['delta']:+.4f} {_ci(delta['ci'])}" if delta else ("baseline" if r["run"] == args.baseline else "")
        lines.append(f"{r['run']:>5} {r['recipe'] or '':<13} {r['seed']:>4}  {acc:<26} {f1:<26} {d}")
    if out["per_class_f1"]:
        cols = [f"run {r}" for r in args.runs]
        lines.append("\nper-class test F1" + (f" (Δ vs run {args.baseline})" if args.baseline is not None else ""))
        lines.append(f"{'class':<16}" + "".join(f"{c:>18}" for c in cols))
        for name, values in out["per_class_f1"].items():
            cells = []
            for c in cols:
                v = values.get(c)
                delta = out["per_class_delta"].get(name, {}).get(c)
                text = "" if v is None else f"{v:.3f}" + (f" ({delta:+.3f})" if delta is not None else "")
                cells.append(f"{text:>18}")
            lines.append(f"{name:<16}" + "".join(cells))
    out["_text"] = "\n".join(lines)
    return out


def _predict(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.results import predict_images

    out = predict_images(args.model, args.images, abstain_above=args.abstain_above)
    lines = []
    for p in out["predictions"]:
        ranked = sorted(p["probabilities"].items(), key=lambda kv: -kv[1])
        head = (f"abstain (far from the training cells; the model's top: {p['top_class']} {p['top_probability']:.3f})"
                if p["abstained"] else f"{p['top_class']} ({p['top_probability']:.3f})")
        flag = ""
        if "ood_ratio" in p:
            flag = f"  [FAR from the training cells, ood {p['ood_ratio']:.2f}]" if p["far"] else \
                f"  [ood {p['ood_ratio']:.2f}]"
        lines.append(f"{p['image']}: {head}{flag}  " + ", ".join(f"{c} {v:.3f}" for c, v in ranked))
    far = sum(1 for p in out["predictions"] if p.get("far"))
    if out["ood"] is not None:
        lines.append(f"{far} of {len(out['predictions'])} image{'s' if len(out['predictions']) != 1 else ''} far "
                     f"from the training cells (ood > 1: beyond the {out['ood']['percentile']:.0f}th percentile of "
                     "the model's real val cells)" + (": their predictions may be unreliable" if far else ""))
    else:
        lines.append(f"no out-of-distribution check: {out['ood_note']}")
    out["_text"] = "\n".join(lines)
    return out


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from db import runs
    from wbc_core import ood
    from wbc_core.cli.main import _follow, acting_user

    user = acting_user(args)
    run_id = ood.start_evaluation(args.run, args.dataset, args.abstain_above, user=user)
    if args.detach:
        return {"job_id": run_id, "status": "queued",
                "_text": f"evaluation job {run_id} started; follow it with `python -m wbc_core runs`"}
    out = _follow(run_id, False, f"evaluate run {args.run}", user)  # the one progress bar + Ctrl-C cancel
    if out["status"] != "succeeded":
        raise ValueError(f"evaluation job {run_id} {out['status']}: {out.get('error') or 'no error recorded'}")
    result = runs.get_run(run_id).result
    return {"job_id": run_id, "status": out["status"], **result, "_text": ood.evaluation_text(result)}


def _export_model(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.results import export_model

    files = export_model(args.run, args.out)
    return {"run_id": args.run, "files": files,
            "_text": "\n".join(f"{kind:<12} {path}" for kind, path in files.items())}


COMMANDS = {"ablation": _ablation, "train-seeds": _train_seeds, "compare": _compare, "predict": _predict,
            "evaluate": _evaluate, "export-model": _export_model, "cancel-group": _cancel_group}
