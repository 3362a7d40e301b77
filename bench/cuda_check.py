"""GPU path check: the app's CUDA code run for real, one pass/fail line per item, JSON for the record.

    python bench/cuda_check.py --data ../shared/data/pbc128 [--device cuda]       # on a GPU machine
    python bench/cuda_check.py --data DIR --device cpu --tiny                       # the suite's smoke run

What it checks on --device (each item records numbers as well as ok):
  precision   the autocast dtype the app picks there, and whether fp16 brings GradScalers
  gan_native  CUDA_PRESET (128 px, width 128) for half of --gan-steps in the native dtype: finite losses,
              channels_last, checkpoints and grids written, s/step
  gan_resume  a second call resumes from that run's last checkpoint and ends at --gan-steps
  gan_fp16    the same in fp16 with GradScalers (forced with WBC_CUDA_AMP_DTYPE=fp16), as older GPUs run it
  portable    a checkpoint written on the device loads on the CPU and samples the same cells
  classifier  ResNet-18 at 64 px trained on the device with AMP; scored on the device and on the CPU, which
              must agree; with --tiny a small_cnn instead
It exits 1 when any item fails. Writes bench/results/cuda_check.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wbc_core import options  # noqa: E402
from wbc_core.classifier import evaluate, train_classifier  # noqa: E402
from wbc_core.gan import CUDA_PRESET, GanConfig, load_generator, sample_cells, train_gan  # noqa: E402
from wbc_core.gan.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from wbc_core.gan.models import build_networks  # noqa: E402
from wbc_core.gan.step import GanStepper  # noqa: E402
from wbc_core.precision import CUDA_AMP_ENV, amp_dtype, precision_label  # noqa: E402
from wbc_core.store import decode_many  # noqa: E402
from wbc_core.types import LabelledImages  # noqa: E402


def load_cells(folder: Path, per_class: int, size: int) -> tuple[list[str], LabelledImages, LabelledImages]:
    """The first 2*per_class files of each class folder, decoded at size: (classes, train half, val half)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"no class folders under {folder}")
    train, val = ([], []), ([], [])
    for ci, c in enumerate(classes):
        files = sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for part, chunk in ((train, files[:per_class]), (val, files[per_class:2 * per_class])):
            part[0].extend(chunk)
            part[1].extend([ci] * len(chunk))
    as_set = [LabelledImages(decode_many(p, size), torch.tensor(y)) for p, y in (train, val)]
    return classes, as_set[0], as_set[1]


def downsize(data: LabelledImages, size: int) -> LabelledImages:
    """The same cells at a smaller side (area averaging); unchanged when already that size."""
    if data.images.shape[-1] == size:
        return data
    small = torch.nn.functional.interpolate(data.images.float(), size=size, mode="area").round().to(torch.uint8)
    return LabelledImages(small, data.labels)


def gan_config(args: argparse.Namespace, steps: int) -> GanConfig:
    if args.tiny:
        return options.gan_config(32, None, dict(
            steps=steps, batch_size=8, width=16, device=args.device, checkpoint_every=max(1, steps // 4),
            sample_every=max(1, steps // 4), log_every=1, num_threads=1, aux_weight=0.3))
    return options.gan_config(CUDA_PRESET["image_size"], "cuda", dict(
        steps=steps, device=args.device, quality_every_checkpoint=False, checkpoint_every=max(1, steps // 4),
        sample_every=max(1, steps // 4), log_every=10))


def run_gan(data: LabelledImages, classes: list[str], config: GanConfig, out: Path,
            resume: Path | None = None) -> dict:
    losses: list[float] = []

    def progress(event) -> None:  # noqa: ANN001
        losses.extend(v for k, v in event.metrics.items() if k in ("loss_d", "loss_g"))

    result = train_gan(data, classes, config, out, progress=progress, resume_from=resume)
    stepper = GanStepper(*build_networks(config, len(classes)), config, torch.device(config.device))
    return {"steps_done": result.steps_done, "sec_per_step": result.sec_per_step, "device": result.device,
            "finite_losses": bool(losses) and all(math.isfinite(v) for v in losses),
            "last_losses": losses[-2:], "checkpoints": [s for s, _ in list_checkpoints(out)],
            "grid_written": result.last_grid.is_file(), "last_checkpoint": str(result.last_checkpoint),
            "channels_last": stepper.memory_format == torch.channels_last,
            "scalers": stepper.scaler_g.is_enabled(), "precision": precision_label(stepper.device, config.amp)}


def check_gan(args: argparse.Namespace, classes: list[str], train: LabelledImages, work: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    steps = 8 if args.tiny else args.gan_steps
    config = gan_config(args, steps)
    # A run stopped half way (its last checkpoint is a full one), then a second call resumes it to the end.
    native = run_gan(train, classes, config.replace(steps=steps // 2), work / "native")
    native["ok"] = native["finite_losses"] and native["steps_done"] == steps // 2 and native["grid_written"] and (
        native["channels_last"] or args.device == "cpu")
    out["gan_native"] = native
    resumed = run_gan(train, classes, config, work / "native", resume=Path(native["last_checkpoint"]))
    resumed["resumed_from_step"] = steps // 2
    resumed["ok"] = resumed["finite_losses"] and resumed["steps_done"] == steps
    out["gan_resume"] = resumed
    os.environ[CUDA_AMP_ENV] = "fp16"
    try:
        fp16 = run_gan(train, classes, config, work / "fp16")
        scale = load_checkpoint(Path(fp16["last_checkpoint"]), map_location="cpu").get("scaler_g", {}).get("scale")
        fp16["grad_scale"] = None if scale is None else float(scale)
        fp16["ok"] = fp16["finite_losses"] and fp16["steps_done"] == steps and (
            fp16["scalers"] or args.device == "cpu")
        out["gan_fp16"] = fp16
    finally:
        del os.environ[CUDA_AMP_ENV]
    on_device = load_generator(Path(resumed["last_checkpoint"]), device=args.device)
    on_cpu = load_generator(Path(resumed["last_checkpoint"]), device="cpu")
    a = sample_cells(on_device, 0, 32, seed=7).cpu().float()
    b = sample_cells(on_cpu, 0, 32, seed=7).float()
    diff = float((a - b).abs().mean())
    # TF32 and kernel choice differ between devices, so the uint8 cells agree closely, not bit for bit.
    out["portable"] = {"mean_abs_uint8_diff": diff, "ok": diff < 2.0}
    return out


def check_classifier(args: argparse.Namespace, classes: list[str], train: LabelledImages,
                     val: LabelledImages, work: Path) -> dict:
    config = options.classifier_config(train.images.shape[-1], dict(
        model="small_cnn" if args.tiny else "resnet18", epochs=1 if args.tiny else args.classifier_epochs,
        batch_size=8 if args.tiny else 128, device=args.device, num_threads=1 if args.tiny else 0))
    result = train_classifier(train, val, classes, config, work / "classifier")
    on_device = evaluate(result.checkpoint, val, classes, device=args.device)
    on_cpu = evaluate(result.checkpoint, val, classes, device="cpu")
    gap = abs(on_device["accuracy"] - on_cpu["accuracy"])
    chance = 1 / len(classes)
    return {"device": result.device, "precision": precision_label(torch.device(args.device), config.amp),
            "seconds": round(result.seconds, 1), "images_per_sec": round(result.images_per_sec, 1),
            "val_accuracy_device": on_device["accuracy"], "val_accuracy_cpu": on_cpu["accuracy"],
            "device_cpu_gap": gap,
            # A trained net must beat chance; on the device it may score a cell or two differently (AMP eval).
            "ok": gap <= 0.02 and (args.tiny or on_device["accuracy"] > 2 * chance)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a folder of class folders (e.g. ../shared/data/pbc128)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="seconds-long CPU smoke: tiny nets, 32 px")
    p.add_argument("--per-class", type=int, default=150, help="train (and as many val) cells per class")
    p.add_argument("--gan-steps", type=int, default=200)
    p.add_argument("--classifier-epochs", type=int, default=8)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "cuda_check.json"))
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here: run this on a GPU machine, or pass --device cpu --tiny")
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    report: dict = {"torch": torch.__version__, "device": args.device,
                    "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}
    dtype = amp_dtype(dev)
    report["precision"] = {"amp_dtype": str(dtype), "label": precision_label(dev, True),
                           "ok": dev.type != "cuda" or dtype in (torch.bfloat16, torch.float16)}
    per_class = 4 if args.tiny else args.per_class
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        classes, train, val = load_cells(Path(args.data), per_class, 32 if args.tiny else 128)
        report.update(check_gan(args, classes, train, work))
        size = 32 if args.tiny else 64  # the classifier's default size
        report["classifier"] = check_classifier(args, classes, downsize(train, size), downsize(val, size), work)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    items = [k for k, v in report.items() if isinstance(v, dict) and "ok" in v]
    report["all_ok"] = all(report[k]["ok"] for k in items)
    for k in items:
        print(f"{'PASS' if report[k]['ok'] else 'FAIL'}  {k}: " + ", ".join(
            f"{n}={v}" for n, v in report[k].items() if n not in ("ok", "last_checkpoint")), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"{'all passed' if report['all_ok'] else 'SOME CHECKS FAILED'} in {report['seconds']} s -> {args.out}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
