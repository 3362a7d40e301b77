"""Speed options for the classifier's and the GAN's training steps, against eager, with the machine's ceiling.

    python bench/options.py [--rounds 3] [--steps 2] [--tag NAME] [--only classifier|gan] [--no-avx2]
                            [--kinds native,avx2,affinity] [--focus]

For each CPU kind (this CPU as it is, then an AVX2-only CPU emulated in a subprocess with ONEDNN_MAX_CPU_ISA=AVX2,
ATEN_CPU_CAPABILITY=avx2 and MKL_ENABLE_INSTRUCTIONS=AVX2, set before torch is imported, plus WBC_CPU_BF16=0 because
such a CPU has no bf16; optionally this CPU with OpenMP threads pinned to cores),
it builds every variant first (paying torch.compile's warm-up, which is timed), then times `--steps` steps of each
variant in turn, `--rounds` times, so load from other users of the machine falls on all variants alike. Rows report
the median seconds per step, images/s, the speed-up over eager fp32 (NCHW, the reference), achieved GFLOP/s (FLOPs
per step counted once with torch.utils.flop_counter) and the fraction of the matmul ceiling (bench/ceiling.py,
measured in the same process). Writes bench/results/options[_TAG].json and .md.
Variants: eager/compiled (inductor), NCHW/channels_last, fp32/bf16 (bf16 only where native), batch size, 1 thread.
Compiled fp32 channels_last is measured too (a first AVX2 probe on the EPYC had it at 25.7 vs NCHW's 40.7 images/s),
and for the classifier a fused AdamW update on top of the compiled step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: the box is shared

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# MKL_ENABLE_INSTRUCTIONS too: oneDNN's cap leaves MKL's matmul on AVX-512 (measured 253 GFLOP/s capped that way on
# the Xeon of 2026-12-02 against 97 with MKL capped as well), so the ceiling and every linear layer ran un-emulated.
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "WBC_CPU_BF16": "0"}


# The CPU kinds a run can measure: label and the environment its child process starts with. "affinity": this CPU
# with OpenMP's threads pinned one per core (GNU OpenMP reads these at start-up, so they need their own process).
KINDS = {"native": ("this CPU (native)", {}), "avx2": ("AVX2-only CPU (emulated)", AVX2_ENV),
         "affinity": ("this CPU, OMP_PROC_BIND=close OMP_PLACES=cores", {"OMP_PROC_BIND": "close",
                                                                          "OMP_PLACES": "cores"})}


def _variants(workload: str, bf16: bool, focus: bool = False) -> list[dict]:
    """(name, compiled, channels_last, bf16, batch, threads) of every variant; the first is the reference."""
    batch = 128 if workload == "classifier" else 64  # ClassifierConfig's and GanConfig's default batch
    rows = [dict(name="eager fp32", compiled=False, cl=False, bf16=False, batch=batch, threads=0),
            dict(name="eager fp32 channels_last", compiled=False, cl=True, bf16=False, batch=batch, threads=0),
            dict(name="compiled fp32", compiled=True, cl=False, bf16=False, batch=batch, threads=0),
            dict(name=f"eager fp32 batch {batch // 2}", compiled=False, cl=False, bf16=False, batch=batch // 2,
                 threads=0),
            dict(name=f"eager fp32 batch {batch * 2}", compiled=False, cl=False, bf16=False, batch=batch * 2,
                 threads=0),
            dict(name="eager fp32 1 thread", compiled=False, cl=False, bf16=False, batch=batch, threads=1),
            dict(name="compiled fp32 channels_last", compiled=True, cl=True, bf16=False, batch=batch, threads=0)]
    if workload == "classifier":  # the GAN's two Adams live inside GanStepper; the classifier's is ours to swap
        rows += [dict(name="eager fp32 fused AdamW", compiled=False, cl=False, bf16=False, batch=batch, threads=0,
                      fused=True),
                 dict(name="compiled fp32 fused AdamW", compiled=True, cl=False, bf16=False, batch=batch, threads=0,
                      fused=True)]
    if focus:  # batch size and one thread measured slower on every CPU so far (0.6-0.9x): time is spent elsewhere
        rows = [r for r in rows if r["batch"] == batch and not r["threads"]]
    if bf16:
        rows += [dict(name="eager bf16 channels_last", compiled=False, cl=True, bf16=True, batch=batch, threads=0),
                 dict(name="compiled bf16 channels_last", compiled=True, cl=True, bf16=True, batch=batch, threads=0),
                 dict(name="eager bf16 NCHW", compiled=False, cl=False, bf16=True, batch=batch, threads=0)]
    return rows


def _classifier_step(v: dict):  # noqa: ANN202
    """A closure running one ResNet-18 64 px training step (the trainer's model, optimiser and loss)."""
    import torch
    import torch.nn.functional as F

    from wbc_core.classifier.config import ClassifierConfig
    from wbc_core.classifier.models import WBCClassifier, build_model
    from wbc_core.classifier.train import make_optimizer

    cfg = ClassifierConfig()
    torch.manual_seed(0)
    fmt = torch.channels_last if v["cl"] else torch.contiguous_format
    model = WBCClassifier(build_model(cfg.model, 8, cfg.image_size), [0.5] * 3, [0.25] * 3, 8, cfg.image_size)
    model.to(memory_format=fmt).train()
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    if v.get("fused"):  # one fused kernel for the whole AdamW update instead of per-tensor foreach ops
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    forward = torch.compile(model) if v["compiled"] else model
    x = torch.rand(v["batch"], 3, cfg.image_size, cfg.image_size).contiguous(memory_format=fmt)
    y = torch.randint(8, (v["batch"],))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v["bf16"]):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _gan_step(v: dict):  # noqa: ANN202
    """A closure running one GanStepper step (D then G) of the default GanConfig."""
    import dataclasses

    import torch

    from wbc_core.compile import compile_gan_stepper
    from wbc_core.gan.config import GanConfig
    from wbc_core.gan.models import build_networks
    from wbc_core.gan.step import GanStepper

    cfg = dataclasses.replace(GanConfig(), device="cpu", batch_size=v["batch"])
    torch.manual_seed(0)
    g, d = build_networks(cfg, 8)
    stepper = GanStepper(g, d, cfg, torch.device("cpu"))
    # The stepper picks precision itself (bf16 where native); force the variant's choice.
    stepper.amp_dtype = torch.bfloat16 if v["bf16"] else None
    stepper.use_memory_format(torch.channels_last if v["cl"] else torch.contiguous_format)
    if v["compiled"]:
        compile_gan_stepper(stepper)
    real = torch.rand(v["batch"], 3, cfg.image_size, cfg.image_size).mul(2).sub(1)
    real = real.contiguous(memory_format=stepper.memory_format)
    y = torch.randint(8, (v["batch"],))
    z = torch.randn(v["batch"], cfg.z_dim)
    return lambda: stepper.step(real, y, z, y)


def _flops(make, v: dict) -> float:  # noqa: ANN001
    """FLOPs of one step of the eager fp32 version of variant v (counted once, forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = make({**v, "compiled": False, "bf16": False})
    step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def child(workload: str, rounds: int, steps: int, focus: bool = False) -> dict:
    """Measure every variant of `workload` in this process (interleaved rounds); returns the JSON result."""
    import torch

    from bench.ceiling import bf16_native, measure_ceiling
    from wbc_core.compile import configure_cache
    from wbc_core.context import current

    current()  # the home's context: the inductor cache lives in its cache folder, as for training jobs
    cache = configure_cache()
    make = _classifier_step if workload == "classifier" else _gan_step
    variants = _variants(workload, bf16_native(), focus)
    ceiling = measure_ceiling(repeats=10)
    base_threads = torch.get_num_threads()
    flops = {}
    for v in variants:
        flops.setdefault(v["batch"], _flops(make, v))
    built = []
    for v in variants:
        t0 = time.perf_counter()
        step = make(v)
        torch.set_num_threads(v["threads"] or base_threads)
        try:
            step()
            step()  # a second call: compiled graphs that recompile once (e.g. grad mode changes) do it here
            v["warmup_s"] = round(time.perf_counter() - t0, 1)
            built.append((v, step, []))
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a result, not a crash
            v["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            torch.set_num_threads(base_threads)
    loads = []
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        for v, step, times in built:
            torch.set_num_threads(v["threads"] or base_threads)
            for _ in range(steps):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
            torch.set_num_threads(base_threads)
    ref = statistics.median(built[0][2]) / built[0][0]["batch"]  # eager fp32 seconds per image
    peak = float(ceiling["matmul_bf16" if "matmul_bf16" in ceiling else "matmul_fp32"])
    peak_fp32 = float(ceiling["matmul_fp32"])
    for v, _, times in built:
        sec = statistics.median(times)
        gflops = flops[v["batch"]] / sec / 1e9
        v.update(sec_per_step=round(sec, 4), images_per_s=round(v["batch"] / sec, 1),
                 speedup=round(ref / (sec / v["batch"]), 2), gflops=round(gflops, 1),
                 fraction_of_matmul_fp32=round(gflops / peak_fp32, 2),
                 fraction_of_matmul_best=round(gflops / peak, 2))
    return {"workload": workload, "variants": variants, "ceiling": ceiling, "rounds": rounds, "steps": steps,
            "gflop_per_step": {str(b): round(f / 1e9, 2) for b, f in flops.items()},
            "load_during": [round(x, 2) for x in loads], "inductor_cache": str(cache)}


def markdown(out: dict) -> str:
    lines = [f"# Training-step options ({out['date']})", ""]
    for kind in out["runs"]:
        for res in kind["results"]:
            c = res["ceiling"]
            cpu = c["cpu"]
            lines += [f"## {res['workload']}: {kind['cpu_kind']}", "",
                      f"CPU {cpu['model']}, torch ISA {cpu['torch_cpu_capability']}, {cpu['threads']} threads, "
                      f"load during {res['load_during']}. Ceiling: matmul fp32 {c['matmul_fp32']} GFLOP/s, conv fp32 "
                      f"{c['conv_fp32']}" + (f", matmul bf16 {c['matmul_bf16']}, conv bf16 {c['conv_bf16']}"
                                             if "matmul_bf16" in c else "") + " GFLOP/s.", "",
                      "| variant | warm-up s | s/step (median) | images/s | × eager fp32 | GFLOP/s | of matmul fp32 |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for v in res["variants"]:
                if "error" in v:
                    lines.append(f"| {v['name']} | failed: {v['error'][:80]} | | | | | |")
                    continue
                lines.append(f"| {v['name']} | {v['warmup_s']} | {v['sec_per_step']} | {v['images_per_s']} | "
                             f"{v['speedup']} | {v['gflops']} | {v['fraction_of_matmul_fp32']} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    p.add_argument("--only", choices=("classifier", "gan"), default=None)
    p.add_argument("--no-avx2", action="store_true", help="skip the emulated AVX2-only CPU")
    p.add_argument("--kinds", default="", help="comma-separated CPU kinds to run instead: " + ", ".join(KINDS))
    p.add_argument("--focus", action="store_true", help="leave out the batch-size and 1-thread variants")
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rounds, args.steps, args.focus)))
        return
    workloads = [args.only] if args.only else ["classifier", "gan"]
    names = [k.strip() for k in args.kinds.split(",") if k.strip()] or (
        ["native"] if args.no_avx2 else ["native", "avx2"])
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        p.error(f"unknown --kinds {unknown}: choose among {', '.join(KINDS)}")
    kinds = [KINDS[n] for n in names]
    runs = []
    for label, env in kinds:
        results = []
        for w in workloads:
            cmd = [sys.executable, __file__, "--child", w, "--rounds", str(args.rounds), "--steps", str(args.steps),
                   *(["--focus"] if args.focus else [])]
            proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{label} {w} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{label} {w}: done", file=sys.stderr)
        runs.append({"cpu_kind": label, "env": env, "results": results})
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}
    name = "options" + (f"_{args.tag}" if args.tag else "")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (folder / f"{name}.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
