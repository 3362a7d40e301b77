"""The bounds of every numeric option and setting, in one place: the domain enforces them, the UI draws its widgets
from them, and a job refuses to start when its batch cannot fit in memory.

Each bound is a frozen `Limit` (name, min, max, integer?, plain label). `check(name, value)` returns the value
(as an int for whole-number limits) or raises ValueError in plain words: NaN, infinity, text, booleans and
out-of-range numbers are all refused. `clamp(name, value)` is for reading stored values that may predate a bound.

Nothing here imports torch: the page server reads these limits too.
"""

from __future__ import annotations

import math
import numbers
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limit:
    """The allowed range of one numeric option or setting."""

    name: str  # key in LIMITS, e.g. "gan_steps"
    min: float  # smallest allowed value (excluded when min_open)
    max: float  # largest allowed value (excluded when max_open)
    integer: bool  # whole numbers only
    label: str  # plain words for messages and widget labels, e.g. "GAN training steps"
    min_open: bool = False  # min itself is not allowed (learning rates: above 0)
    max_open: bool = False  # max itself is not allowed (decays, smoothing: below 1)

    def rule(self) -> str:
        """The allowed range in words: "a whole number from 1 to 1,000,000", "a number above 0 and below 1"."""
        kind = "a whole number" if self.integer else "a number"
        if not (self.min_open or self.max_open):
            return f"{kind} from {_fmt(self.min)} to {_fmt(self.max)}"
        low = f"above {_fmt(self.min)}" if self.min_open else f"at least {_fmt(self.min)}"
        high = f"below {_fmt(self.max)}" if self.max_open else f"at most {_fmt(self.max)}"
        return f"{kind} {low} and {high}"

    def problem(self, value: Any, what: str | None = None) -> str | None:
        """None when value is allowed, else the plain reason ("<what> must be ..., got ...")."""
        what = what or self.label
        bad = f"{what} must be {self.rule()}, got {_shown(value)}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return bad
        try:
            number = float(value)
        except (OverflowError, ValueError):  # an int too large for a float is out of every range here
            return bad
        if not math.isfinite(number):
            return bad
        if self.integer and not (isinstance(value, numbers.Integral) or number.is_integer()):
            return bad
        below = number <= self.min if self.min_open else number < self.min
        above = number >= self.max if self.max_open else number > self.max
        if self.integer and isinstance(value, numbers.Integral):  # exact, also for ints beyond float precision
            below = int(value) < self.min
            above = int(value) > self.max
        return bad if below or above else None

    def check(self, value: Any, what: str | None = None) -> int | float:
        """value when allowed (an int for whole-number limits), else ValueError in plain words."""
        reason = self.problem(value, what)
        if reason:
            raise ValueError(reason)
        return int(value) if self.integer else float(value)

    def clamp(self, value: Any) -> int | float | None:
        """A stored value brought into range (None when it is not a finite number at all)."""
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
            return None
        try:
            number = float(value)
        except (OverflowError, ValueError):
            if isinstance(value, numbers.Integral):  # a huge int: beyond every max
                number = math.inf if value > 0 else -math.inf
            else:
                return None
        if math.isnan(number):
            return None
        number = min(max(number, self.min), self.max)
        return int(number) if self.integer else float(number)

    @property
    def widget_min(self) -> int | float:
        """The lowest value a widget may offer (the smallest step above an open minimum); an int for whole-number
        limits and a float otherwise, as Streamlit wants min, max and value of one type."""
        if self.integer:
            return int(self.min) + (1 if self.min_open else 0)
        return float(self.min) + 1e-6 if self.min_open else float(self.min)

    @property
    def widget_max(self) -> int | float:
        """The highest value a widget may offer."""
        if self.integer:
            return int(self.max) - (1 if self.max_open else 0)
        return float(self.max) - 1e-6 if self.max_open else float(self.max)


def _fmt(x: float) -> str:
    if float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{x:g}"


def _shown(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return repr(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}" if abs(int(value)) >= 1000 else str(int(value))
    return f"{float(value):g}"


SEED_MAX = 2**31 - 1  # seeds are multiplied by small strides (provenance) and must stay within torch's 64 bits

_ALL = (
    # GAN training (GanConfig)
    Limit("gan_image_size", 32, 128, True, "GAN image size in pixels"),
    Limit("gan_steps", 1, 1_000_000, True, "GAN training steps"),
    Limit("gan_batch", 2, 1024, True, "GAN batch size"),
    Limit("gan_width", 8, 1024, True, "GAN network width"),
    Limit("gan_z_dim", 1, 1024, True, "GAN noise length"),
    Limit("gan_lr", 0, 1, False, "GAN learning rate", min_open=True, max_open=True),
    Limit("gan_beta", 0, 1, False, "Adam beta", max_open=True),
    Limit("gan_ema_decay", 0, 1, False, "EMA decay", max_open=True),
    Limit("gan_ema_start", 0, 1_000_000, True, "EMA start step"),
    Limit("gan_bn_refresh_batches", 1, 1000, True, "batch-norm refresh batches"),
    # A value beyond the run's steps means "only at the end"; benches use 10**9 for that.
    Limit("gan_every", 1, 10**9, True, "steps between checkpoints, grids or log lines"),
    Limit("gan_grid_per_class", 1, 64, True, "sample-grid cells per class"),
    Limit("gan_aux_weight", 0, 10, False, "class-head weight"),
    # Generation and quality
    Limit("candidates_per_class", 1, 5000, True, "candidates per class"),
    Limit("quality_cells_per_class", 2, 1000, True, "cells per class to score"),
    # Classifier training (ClassifierConfig)
    Limit("classifier_image_size", 16, 512, True, "classifier image size in pixels"),
    Limit("classifier_epochs", 1, 1000, True, "classifier epochs"),
    Limit("classifier_batch", 2, 4096, True, "classifier batch size"),
    Limit("classifier_lr", 0, 10, False, "classifier learning rate", min_open=True, max_open=True),
    Limit("classifier_weight_decay", 0, 1, False, "weight decay", max_open=True),
    Limit("classifier_label_smoothing", 0, 1, False, "label smoothing", max_open=True),
    Limit("classifier_patience", 0, 1000, True, "early stopping patience in epochs"),
    Limit("classifier_val_every", 1, 1000, True, "epochs between validations"),
    # Data-parallel training processes (DDP): one per GPU on CUDA, one per core share on CPU (gloo)
    Limit("classifier_workers", 1, 64, True, "classifier training processes"),
    Limit("progress_every_s", 0, 3600, False, "seconds between progress reports", min_open=True),
    Limit("synthetic_cap", 0, 100, False, "synthetic cap (times the real cells per class)"),
    Limit("mix_target", 1, 1_000_000, True, "fill target (cells per class)"),
    Limit("synthetic_weight", 0, 1, False, "synthetic weight", min_open=True),
    # Shared by every job
    Limit("seed", 0, SEED_MAX, True, "seed"),
    Limit("threads", 0, 1024, True, "CPU threads"),
    # Review settings
    Limit("quota", 0, 1_000_000, True, "quota (accepted candidates wanted for a class)"),
    Limit("consensus_votes", 1, 20, True, "number of reviewers in the consensus rule"),
    Limit("blind_fraction", 0, 0.5, False, "share of real cells in the blind test", min_open=True),
    Limit("retrain_every", 0, 100_000, True, "new decisions between acceptance-model retrains (0 = never)"),
    Limit("steer_factor", 1, 50, True, "steering oversampling factor (latent codes per kept candidate)"),
    # GAN fine-tuning with the acceptance model as a reward (wbc_core.gan_finetune)
    Limit("finetune_steps", 1, 100_000, True, "fine-tuning steps"),
    Limit("finetune_reward_weight", 0, 100, False, "acceptance reward weight", min_open=True),
    Limit("finetune_anchor_weight", 0, 1000, False, "anchor weight (0: no anchor to the parent)"),
    # Import and demo
    Limit("split_fraction", 0, 0.5, False, "val or test fraction"),
    Limit("demo_per_class", 1, 5000, True, "demo cells per class"),
    # Pages
    Limit("review_page_size", 8, 200, True, "candidates per review page"),
    Limit("thumbnail_size", 8, 512, True, "thumbnail size in pixels"),
    Limit("embedding_points", 3, 3000, True, "cells in the embedding map"),
    # Sign-in (WBC_SESSION_HOURS): how long a local sign-in is kept across reloads
    Limit("session_hours", 0, 24 * 90, False, "hours a sign-in is kept", min_open=True),
)
LIMITS: dict[str, Limit] = {limit.name: limit for limit in _ALL}


def bound(name: str) -> Limit:
    """The limit called name (KeyError names the known ones)."""
    try:
        return LIMITS[name]
    except KeyError:
        raise KeyError(f"no limit {name!r}; known: {', '.join(LIMITS)}") from None


def check(name: str, value: Any, what: str | None = None) -> int | float:
    """value when it lies within limit name (an int for whole-number limits), else ValueError in plain words."""
    return bound(name).check(value, what)


def clamp(name: str, value: Any) -> int | float | None:
    """A stored value brought into limit name's range; None when it is not a number (NaN, text, None)."""
    return bound(name).clamp(value)


# -- memory ---------------------------------------------------------------------------------------------------------

GIB = 1024**3
# Calibrated from the peak RSS of real fp32 CPU training steps on this project's networks (2-core EPYC VM, torch
# 2.x; bf16/AMP needs less): the interpreter with torch and the first step's kernels hold ~800 MB; a GAN step
# keeps ~13 bytes per feature-map element of G and D (saved activations, gradients, DiffAugment copies), e.g.
# 4.3 MB per sample at 64 px / width 64 (measured +832 MB from batch 64 to 256); a classifier step keeps ~650 bytes
# per input pixel and sample, for ResNet-18 (+221 MB from batch 32 to 128 at 64 px) and the small CNN alike.
RUNTIME_BYTES = 800 * 1024**2
GAN_BYTES_PER_ELEMENT = 13
CLASSIFIER_BYTES_PER_PIXEL = 650
CLASSIFIER_PARAMS = {"small_cnn": 0.5e6, "resnet18": 11.2e6}
DEFAULT_MODEL_PARAMS = 25e6  # unknown torchvision models: about a ResNet-50


def _stage_channels(width: int, num_stages: int) -> list[int]:
    # Mirrors wbc_core.gan.models.stage_channels (tests compare the parameter count with the real networks).
    return [max((4 * width) >> i, width // 2) for i in range(num_stages + 1)]


def gan_parameter_count(image_size: int, g_width: int, d_width: int, z_dim: int = 128) -> int:
    """Approximate trainable parameters of the generator plus the discriminator (convolution weights dominate)."""
    stages = max(1, int(math.log2(image_size)) - 2)
    g = _stage_channels(g_width, stages)
    d = _stage_channels(d_width, stages)[::-1]
    g_params = z_dim * g[0] * 16 + sum(g[i] * g[i + 1] * 16 for i in range(stages)) + g[-1] * 3 * 9
    d_params = 3 * d[1] * 16 + sum(d[i] * d[i + 1] * 16 for i in range(1, stages)) + d[-1] * d[-1] * 9
    return g_params + d_params


def gan_memory_bytes(batch_size: int, image_size: int, g_width: int, d_width: int, z_dim: int = 128,
                     train_cells: int = 0) -> int:
    """Estimated peak memory of one GAN training step: batch x feature maps of G and D, weights and the data."""
    stages = max(1, int(math.log2(image_size)) - 2)
    g = _stage_channels(g_width, stages)
    d = _stage_channels(d_width, stages)[::-1]
    g_elements = sum(g[i] * (4 << i) ** 2 for i in range(stages + 1)) + 3 * image_size**2
    d_elements = 3 * image_size**2 + sum(d[i + 1] * (image_size >> (i + 1)) ** 2 for i in range(stages))
    # D sees a real and a fake batch per step; G's graph is held while D scores its fakes.
    per_sample = (g_elements + 2 * d_elements) * GAN_BYTES_PER_ELEMENT
    # Weights: G live + grad + 2 Adam moments + EMA copy; D live + grad + 2 moments; fp32.
    weights = gan_parameter_count(image_size, g_width, d_width, z_dim) * 5 * 4
    data = train_cells * 3 * image_size**2
    return int(RUNTIME_BYTES + weights + data + batch_size * per_sample)


def classifier_memory_bytes(model: str, batch_size: int, image_size: int, train_cells: int = 0,
                            val_cells: int = 0) -> int:
    """Estimated peak memory of one classifier training step (the batch is at most the train cells)."""
    batch = min(batch_size, train_cells) if train_cells else batch_size
    params = CLASSIFIER_PARAMS.get(model, DEFAULT_MODEL_PARAMS)  # weights, gradients, two AdamW moments
    data = (train_cells + val_cells) * 3 * image_size**2
    return int(RUNTIME_BYTES + params * 4 * 4 + data + batch * image_size**2 * CLASSIFIER_BYTES_PER_PIXEL)


def available_memory_bytes() -> int | None:
    """Memory this machine can still give a new process: MemAvailable from /proc/meminfo, else free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _gpu_memory_bytes(device: str) -> int | None:
    """Total memory of the CUDA device a run would use; None on CPU runs or when it cannot be told cheaply.

    torch is asked only when this process has loaded it already; otherwise nvidia-smi (the page server must not
    import torch just to check a form)."""
    from wbc_core.hardware import cuda_visible

    if not device.startswith(("cuda", "auto")) or not cuda_visible():
        return None
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    torch = sys.modules.get("torch")
    if torch is not None:
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.get_device_properties(index).total_memory)
    try:
        query = ["nvidia-smi", f"--id={index}", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
        return int(float(out.strip().splitlines()[0])) * 1024**2
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _runs_on_gpu(device: str) -> bool:
    from wbc_core.hardware import cuda_visible

    return device.startswith("cuda") or (device == "auto" and cuda_visible())


def _check_fits(what: str, need: int, device: str, available: int | None, advice: str) -> None:
    """ValueError in plain words when need bytes cannot fit: on the GPU the run would use, else in free RAM."""
    if available is None and _runs_on_gpu(device):  # weights and activations on the GPU (the data stays in RAM)
        gpu = _gpu_memory_bytes(device)
        need -= RUNTIME_BYTES
        have, where = gpu, "the GPU"
    else:
        have = available if available is not None else available_memory_bytes()
        where = "this machine"
    if have is not None and need > have:
        raise ValueError(f"{what} needs about {need / GIB:.1f} GiB of memory, but {where} has "
                         f"{have / GIB:.1f} GiB available; {advice}")


def check_gan_job(config: Any, train_cells: int, available: int | None = None) -> None:
    """Refuse a GAN run whose batch exceeds the train cells, or whose step cannot fit in memory (plain words).

    available: bytes to compare with (default: the GPU's memory for GPU runs, else MemAvailable)."""
    if config.batch_size > train_cells:
        raise ValueError(f"a batch of {config.batch_size:,} cells is larger than the {train_cells:,} train cells "
                         f"it is drawn from; choose a batch of at most {train_cells:,}")
    need = gan_memory_bytes(config.batch_size, config.image_size, config.g_width, config.d_width, config.z_dim,
                            train_cells)
    what = (f"a GAN batch of {config.batch_size:,} at {config.image_size} px and width "
            f"{max(config.g_width, config.d_width)}")
    _check_fits(what, need, config.device, available, "choose a smaller batch, width or image size")


def check_classifier_job(config: Any, train_cells: int, val_cells: int = 0, available: int | None = None) -> None:
    """Refuse a classifier run that cannot fit in memory (plain words).

    A batch above the train cells is not refused: the trainer then puts every cell into one batch per epoch, so
    that is the effective batch size (and the one the estimate uses)."""
    need = classifier_memory_bytes(config.model, config.batch_size, config.image_size, train_cells, val_cells)
    what = (f"a {config.model} batch of {min(config.batch_size, train_cells or config.batch_size):,} "
            f"at {config.image_size} px")
    _check_fits(what, need, config.device, available, "choose a smaller batch or a smaller model")
