"""The machine's physical ceiling: matmul and 3x3 convolution GFLOP/s, fp32 and (where native) bf16.

    python bench/ceiling.py [--repeats 5] [--json out.json]

Other benches (bench/options.py, bench/train.py, bench/gan.py) call `measure_ceiling()` in the same run as their
training rows, so "fraction of the ceiling" compares numbers taken under the same load. The ceiling is the best of
`repeats` timings (a shared machine only ever makes kernels slower), the training rows are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Big enough to run at the kernels' peak, small enough to time in well under a second on two cores.
MATMUL_N = 1024
CONV_SHAPE = (64, 128, 16, 16)  # batch, channels, height, width: a ResNet-18 layer2 block at 64 px input


def _best_seconds(fn, repeats: int, inner: int) -> float:  # noqa: ANN001
    fn()  # warm-up: allocator, oneDNN primitive cache
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def matmul_gflops(dtype: torch.dtype, repeats: int = 5, n: int = MATMUL_N) -> float:
    """GFLOP/s of an n x n x n matmul in dtype on the CPU (2 n^3 FLOPs per product)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / _best_seconds(lambda: torch.mm(a, b), repeats, 3) / 1e9


def conv_gflops(dtype: torch.dtype, repeats: int = 5, shape: tuple[int, int, int, int] = CONV_SHAPE) -> float:
    """GFLOP/s of a 3x3, stride-1, same-padding convolution C->C in dtype, channels_last (oneDNN's fast layout)."""
    n, c, h, w = shape
    x = torch.randn(n, c, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
    k = torch.randn(c, c, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * n * c * c * 9 * h * w
    with torch.no_grad():
        return flops / _best_seconds(lambda: F.conv2d(x, k, padding=1), repeats, 3) / 1e9


def cpu_description() -> dict[str, object]:
    """What the CPU numbers were measured on: model name, torch's ISA level, threads and the ISA caps in force."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = _cpu_flags()
    return {"model": model, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags, "threads": torch.get_num_threads(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
            "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", ""), "torch": torch.__version__}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_native() -> bool:
    """Whether bf16 is worth measuring: the CPU has AVX512-BF16 or AMX and no ISA cap below AVX-512 is set."""
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith(("AVX2", "SSE"))
    capped = capped or os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("avx2", "default")
    flags = _cpu_flags()
    return not capped and ("avx512_bf16" in flags or "amx_tile" in flags)


def measure_ceiling(repeats: int = 5) -> dict[str, object]:
    """{"matmul_fp32": GFLOP/s, "conv_fp32": ..., ["matmul_bf16", "conv_bf16"], "cpu": {...}, "load": [1,5,15]}."""
    out: dict[str, object] = {"matmul_fp32": round(matmul_gflops(torch.float32, repeats), 1),
                              "conv_fp32": round(conv_gflops(torch.float32, repeats), 1)}
    if bf16_native():
        out["matmul_bf16"] = round(matmul_gflops(torch.bfloat16, repeats), 1)
        out["conv_bf16"] = round(conv_gflops(torch.bfloat16, repeats), 1)
    out["cpu"] = cpu_description()
    out["load"] = [round(v, 2) for v in os.getloadavg()]
    return out


def step_flops(step) -> float:  # noqa: ANN001
    """FLOPs torch counts (matmuls and convolutions, forward and backward) in one call of step()."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def classifier_flops_per_image(model: str, size: int, classes: int = 8, batch: int = 8) -> float:
    """FLOPs of one training image (forward + backward) of the classifier `model` at size px, eager fp32."""
    from wbc_core.classifier.models import build_model

    net = build_model(model, classes, size).train()
    x, y = torch.rand(batch, 3, size, size), torch.arange(batch) % classes

    def step() -> None:
        F.cross_entropy(net(x), y).backward()

    return step_flops(step) / batch


def gan_step_flops(config, classes: int) -> float:  # noqa: ANN001 - a GanConfig
    """FLOPs of one GanStepper step (D update then G update) of config, eager fp32 on the CPU."""
    import dataclasses

    from wbc_core.gan.models import build_networks
    from wbc_core.gan.step import GanStepper

    cfg = dataclasses.replace(config, device="cpu", amp=False)
    g, d = build_networks(cfg, classes)
    stepper = GanStepper(g, d, cfg, torch.device("cpu"))
    b = cfg.batch_size
    real, y, z = torch.rand(b, 3, cfg.image_size, cfg.image_size) * 2 - 1, torch.arange(b) % classes, \
        torch.randn(b, cfg.z_dim)
    return step_flops(lambda: stepper.step(real, y, z, y))


def achieved(flops_per_second: float, ceiling: dict[str, object]) -> dict[str, float]:
    """GFLOP/s and its fraction of the fp32 matmul ceiling (and of the bf16 one where measured)."""
    gflops = flops_per_second / 1e9
    out = {"gflops": round(gflops, 1), "of_matmul_fp32": round(gflops / float(ceiling["matmul_fp32"]), 3)}
    if "matmul_bf16" in ceiling:
        out["of_matmul_bf16"] = round(gflops / float(ceiling["matmul_bf16"]), 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="", help="also write the result to this file")
    args = p.parse_args()
    result = measure_ceiling(args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
