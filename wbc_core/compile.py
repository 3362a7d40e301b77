"""How a training step runs on a device: compiled (torch.compile, inductor) or eager, and in which memory format.

The one place that decides it, for the classifier and the GAN alike, from measurements (bench/options.py,
bench/results/options*.json) rather than hopes: a speed option becomes a device's default only where it measured
faster there. Compiling costs a warm-up (tens of seconds to minutes on a CPU), so a run compiles only when its
planned steps pay that back (`worth_compiling`), and a compiled step that cannot work (no C++ compiler, an
unsupported platform, a compiler error) falls back to eager once, with a message saying why.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
WORKLOADS = ("classifier", "gan")
REQUESTS = ("auto", "on", "off")  # "auto": follow the measurements; "on"/"off": benches and tests choose


@dataclass(frozen=True)
class Measured:
    """One workload's measured step times on one kind of device (default batch, median of interleaved rounds)."""

    eager_step_s: float  # seconds per eager step, in the precision and layout the device uses by default
    compiled_step_s: float  # seconds per torch.compile'd step, same precision and layout
    warmup_s: float  # first two compiled steps minus two eager ones: what compiling costs once per process
    source: str  # where the numbers come from
    # The layout each time was measured in, and the one a run then uses: NHWC where it measured faster (fp32 on
    # CPU too); mixed precision always runs NHWC (oneDNN's bf16 kernels, tensor cores).
    eager_channels_last: bool = False
    compiled_channels_last: bool = False

    @property
    def speedup(self) -> float:
        return self.eager_step_s / self.compiled_step_s if self.compiled_step_s > 0 else 0.0


# bench/options.py (bench/results/options_classifier.json, options_gan.json), 2026-12-01: a 2-core AMD EPYC
# (AVX512-BF16) shared with other users (load 4-10), torch 2.14 CPU inductor, 3 interleaved rounds of 2 steps,
# medians. fp32 rows: the AVX2-only CPU, emulated (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2), the CPU
# kind that runs fp32 by default and the smaller of the two fp32 gains (native AVX-512 fp32: classifier 1.48x,
# GAN 1.35x). bf16 rows: native AVX512-BF16, compiled vs eager bf16 channels_last. Default models and batches
# (ResNet-18 64 px batch 128; GAN 64 px batch 64, widths 64). Classifier warm-ups are doubled: an epoch's batches
# come in two sizes (n / batch rounded both ways), and each size is compiled once. CUDA was not measured (no GPU
# in this session), so it stays eager, as does anything missing here. Those fp32 rows are the general ones, for
# a CPU kind without a row of its own (the emulation capped oneDNN and ATen but not MKL's matmul: a partial one).
#
# Rows of a CPU kind (wbc_core.compile.cpu_kind) come first. bench/options.py --focus, 2026-12-02: a 2-core Intel
# Xeon @ 2.60 GHz with AVX-512 and no bf16, idle (the bench alone, load 1.2-1.8), 5 interleaved rounds of 2 steps,
# medians (options_intel_nobf16.json); cold-cache warm-ups from the same day's first run
# (options_intel_nobf16_first.json). Each row compares the fastest eager layout with the fastest compiled one, and
# the run then uses those layouts. AVX2 rows: bench/options.py on a real AVX2-only CPU, 2026-12-07: a 2-core AMD
# EPYC (Zen 3, no AVX-512, no bf16), the bench alone (load 1.4-1.6), 3 interleaved rounds of 2 steps, medians, cold
# inductor cache (options_epyc_avx2.json); a focused 5-round classifier re-run gave the same order
# (options_epyc_avx2_classifier_focus.json). They replace the Xeon capped to AVX2, whose emulation had NHWC eager
# ResNet-18 at 0.94x where the real CPU measured 1.04-1.13x.
MEASURED: dict[tuple[str, ...], Measured] = {
    # ResNet-18: NHWC eager 1.16x NCHW (1.04x in the first run); compiling adds nothing on top (0.99x): eager NHWC.
    ("classifier", "cpu", "fp32", "AVX512"): Measured(1.2035, 1.2105, 2 * 80.7, "Xeon AVX-512 no bf16, "
                                                      "options_intel_nobf16.json", True, True),
    # AVX2: eager NHWC 1.04x NCHW (1.13x in the focused run), compiled NHWC 1.09x (1.14x): compiling adds 1.01-1.06x
    # on top of NHWC, worth its two cold warm-ups (61 s each) only beyond ~1,900 steps.
    ("classifier", "cpu", "fp32", "AVX2"): Measured(1.1837, 1.1200, 2 * 61.2, "AMD EPYC AVX2 native, "
                                                    "options_epyc_avx2.json", True, True),
    # GAN: eager NHWC 1.21x NCHW; compiled NHWC 1.43x NCHW (1.81x in the first run), so 1.18x over eager NHWC.
    ("gan", "cpu", "fp32", "AVX512"): Measured(0.7846, 0.6656, 57.7, "Xeon AVX-512 no bf16, "
                                               "options_intel_nobf16.json", True, True),
    # GAN: eager NHWC 1.30x NCHW, compiled NHWC 1.46x NCHW (1.13x over eager NHWC; 44% of the matmul ceiling).
    ("gan", "cpu", "fp32", "AVX2"): Measured(0.8031, 0.7124, 43.9, "AMD EPYC AVX2 native, options_epyc_avx2.json",
                                             True, True),
    ("classifier", "cpu", "fp32"): Measured(2.570, 2.242, 2 * 87.5, "AVX2 emulated, options_classifier.json"),
    ("classifier", "cpu", "bf16"): Measured(6.969, 5.463, 2 * 366.0, "AVX512-BF16, options_classifier.json"),
    ("gan", "cpu", "fp32"): Measured(1.342, 1.093, 93.6, "AVX2 emulated, options_gan.json"),
    # Re-measured on the idle machine (load 0.8-1.2, 2026-12-02, options_gan_idle_native.json): eager bf16
    # 0.429 s, compiled 0.334 s (1.29x; the loaded run's 1.54x was noise). Its warm-up (5 s) had a warm cache;
    # the cold one stays the loaded run's 125.6 s, on the safe side.
    ("gan", "cpu", "bf16"): Measured(0.4292, 0.3335, 125.6, "AVX512-BF16 idle, options_gan_idle_native.json"),
}


@dataclass
class CompilePlan:
    """What a run does for speed, and why; `describe()` is saved with the run so it describes itself."""

    compiled: bool  # the training step goes through torch.compile
    channels_last: bool  # model and batches in NHWC (oneDNN's bf16 kernels, tensor cores); NCHW otherwise
    reason: str  # plain words: why compiled or not
    notes: list[str] = field(default_factory=list)  # what happened later (a fall-back to eager)

    def describe(self) -> dict[str, Any]:
        """JSON-safe record for run configs, checkpoints and metrics."""
        return {"compiled": self.compiled, "channels_last": self.channels_last, "reason": self.reason,
                "notes": list(self.notes)}


def inductor_problem(device_type: str) -> str:
    """Why torch.compile's inductor cannot work for device_type here, in plain words; "" when it can."""
    import torch

    if device_type not in ("cpu", "cuda"):
        return f"torch.compile is not used on {device_type} devices"
    if sys.platform == "win32":
        return "torch.compile's CPU code generation is not supported on Windows here"
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {platform.python_version()} in torch {torch.__version__}"
    if device_type == "cpu" and not c_compiler():
        return "no C++ compiler found (install g++, e.g. apt-get install g++, to compile CPU training steps)"
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed, which torch.compile needs on CUDA"
    return ""


def c_compiler() -> str:
    """The C++ compiler inductor would call (CXX, else g++/clang++/c++ on PATH), or "" when there is none."""
    import torch._inductor.config as inductor_config

    configured = inductor_config.cpp.cxx
    names = [n for n in configured if n] if isinstance(configured, (tuple, list)) else [configured]
    for name in (*names, "g++", "clang++", "c++"):
        if name and shutil.which(str(name)):
            return str(shutil.which(str(name)))
    return ""


def worth_compiling(planned_steps: int, measured: Measured | None, work_scale: float = 1.0) -> bool:
    """True when compiling measured faster and `planned_steps` steps win back its warm-up (so never slower).

    work_scale: this run's work per step relative to the measured one (a smaller batch or model saves less per
    step; the warm-up, which depends on the graph rather than its size, stays the same)."""
    if measured is None or measured.compiled_step_s >= measured.eager_step_s or work_scale <= 0:
        return False
    return planned_steps * (measured.eager_step_s - measured.compiled_step_s) * work_scale > measured.warmup_s


def plan(workload: str, device_type: str, precision: str, planned_steps: int, request: str = "auto",
         amp: bool = False, work_scale: float = 1.0) -> CompilePlan:
    """The speed plan for a run of `planned_steps` steps of workload on device_type in precision ("fp32", "bf16",
    "fp16"); amp: mixed precision is on (channels_last then, as measured for oneDNN bf16 and tensor cores);
    work_scale: work per step relative to the measured default (0: a model that was not measured)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    if request not in REQUESTS:
        raise ValueError(f"compile must be one of {REQUESTS}, got {request!r}")
    # channels_last in fp32 on CPU follows the measured row (eager_/compiled_channels_last): for ResNet-18 it was
    # 3.4x slower on the idle EPYC and 1.17x faster in a loaded run, so NCHW stays there unless a row says otherwise.
    measured = measured_for(workload, device_type, precision)
    measured_model = measured is not None and work_scale > 0  # the layouts too were measured on the default model
    eager_layout = amp or (measured_model and measured.eager_channels_last)
    compiled_layout = amp or (measured_model and measured.compiled_channels_last)
    if request == "off":
        return CompilePlan(False, eager_layout, "eager: compiling was turned off")
    problem = inductor_problem(device_type)
    if problem:
        return CompilePlan(False, eager_layout, f"eager: {problem}")
    if request == "on":
        return CompilePlan(True, compiled_layout, "compiled: asked for")
    if measured is not None and work_scale <= 0:
        return CompilePlan(False, eager_layout, f"eager: compiling was measured for the default {workload} "
                                                "model only")
    if measured is None:
        return CompilePlan(False, eager_layout, f"eager: compiling the {workload} on {device_type} {precision} "
                                                "was not measured faster")
    if measured.speedup <= 1.0:
        return CompilePlan(False, eager_layout, f"eager: compiled steps measured {measured.speedup:.2f}x eager "
                                                f"on {device_type} {precision} ({measured.source})")
    if not worth_compiling(planned_steps, measured, work_scale):
        return CompilePlan(False, eager_layout, f"eager: {planned_steps} steps would not win back the "
                                                f"{measured.warmup_s:.0f} s compile warm-up")
    return CompilePlan(True, compiled_layout, f"compiled: {measured.speedup:.2f}x eager measured on {device_type} "
                                              f"{precision}, warm-up {measured.warmup_s:.0f} s ({measured.source})")


def cpu_kind() -> str:
    """This CPU's kind for the measurements: torch's ISA level ("AVX512", "AVX2", "DEFAULT", ...), with "-BF16" where
    an AVX-512 CPU also has bf16 units (AVX512-BF16 or AMX). fp32 gains differ by kind (bench/options.py): channels_last
    fp32 was 3.4x slower for ResNet-18 on an AVX512-BF16 EPYC and 1.16x faster on an AVX-512 Xeon without bf16."""
    import torch

    from wbc_core.precision import cpu_bf16_hardware

    isa = torch.backends.cpu.get_cpu_capability().upper()
    return f"{isa}-BF16" if isa.startswith("AVX512") and cpu_bf16_hardware() else isa


def measured_for(workload: str, device_type: str, precision: str) -> Measured | None:
    """The measurement for this kind of device: on a CPU the row of its kind (cpu_kind) first, else the general row."""
    if device_type == "cpu":
        found = MEASURED.get((workload, device_type, precision, cpu_kind()))
        if found is not None:
            return found
    return MEASURED.get((workload, device_type, precision))


def cache_folder(cache_root: Path) -> Path:
    """Where inductor keeps compiled kernels under cache_root: one folder per torch version and CPU ISA level."""
    import torch

    # Why the ISA in the name: inductor's cache reused AVX-512 kernels in a process capped at AVX2
    # (ATEN_CPU_CAPABILITY=avx2), and the training step then failed (index out of bounds in max-pool's backward).
    return cache_root / "inductor" / f"torch{torch.__version__}-{torch.backends.cpu.get_cpu_capability().lower()}"


def configure_cache() -> Path | None:
    """Point torch's compile caches at the context's cache folder (once per process); None without a context."""
    from wbc_core import context

    if not context.is_current():
        return None  # library use without a home: torch's own default (under /tmp) stays
    folder = cache_folder(context.current().paths.cache)
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(folder):
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # read by inductor when it first compiles
        os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True  # graphs compiled by an earlier run are loaded, not recompiled
    return folder


class Guarded:
    """A callable that runs compiled until the first failure, then eager for good, noting why in the plan."""

    def __init__(self, eager: Callable[..., Any], plan_: CompilePlan) -> None:
        import torch

        self.eager, self.plan = eager, plan_
        self.compiled: Callable[..., Any] | None = None
        if plan_.compiled:
            configure_cache()
            self.compiled = torch.compile(eager)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.compiled if self.compiled is not None else self.eager  # not `or`: modules may define __len__
        return fn(*args, **kwargs)

    def fall_back(self, exc: BaseException) -> str:
        """Go eager from now on; returns the message (also logged and kept in the plan's notes)."""
        self.compiled = None
        self.plan.compiled = False
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        message = f"compiled step failed ({type(exc).__name__}: {first}); continuing eager"
        if message not in self.plan.notes:  # guards sharing one plan fail together: say it once
            self.plan.notes.append(message)
            log.warning(message)
        return message


def run_guarded(guards: list[Guarded], step: Callable[[], T], on_fallback: Callable[[str], None] | None = None) -> T:
    """step(); if it raises while any guard is compiled, turn them all eager and run step() once more."""
    if not any(g.active for g in guards):
        return step()
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - any compiler or runtime failure of generated code: eager still works
        messages = [g.fall_back(exc) for g in guards if g.active]
        if on_fallback is not None:
            on_fallback(messages[0])
        return step()


def compile_gan_stepper(stepper: Any, plan_: CompilePlan | None = None) -> CompilePlan:
    """Compile a GanStepper's G forward and D's forward_with_class (both guarded); returns the plan used."""
    import torch

    plan_ = plan_ or CompilePlan(True, stepper.memory_format == torch.channels_last, "compiled: asked for")
    stepper.g_call = Guarded(stepper.g, plan_)
    stepper.d_call = Guarded(stepper.d.forward_with_class, plan_)
    stepper.compile_plan = plan_
    return plan_
