"""GAN training configuration: one frozen dataclass, validated on construction, JSON round-trippable."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wbc_core import limits
from wbc_core.compile import REQUESTS as COMPILE_REQUESTS

if TYPE_CHECKING:  # torch is imported only where a device is resolved: reading defaults must not load it
    import torch

IMAGE_SIZES = (32, 64, 128)
DIFFAUG_OPS = ("color", "translation", "cutout")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class GanConfig:
    """Everything that decides how a class-conditional GAN is built and trained."""

    image_size: int = 64  # square output side in pixels; one of 32, 64, 128
    steps: int = 3000  # total optimiser steps (one D update + one G update each)
    batch_size: int = 64  # real and fake images per step
    z_dim: int = 128  # length of the generator's noise vector
    g_width: int = 64  # generator base channel width (top block has 4x this)
    d_width: int = 64  # discriminator base channel width (last block has 4x this)
    lr_g: float = 2e-4  # generator Adam learning rate
    lr_d: float = 2e-4  # discriminator Adam learning rate
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas for both networks
    ema_decay: float = 0.999  # per-step decay (cap) of the generator weight average used for samples
    ema_start: int = 500  # before this step the EMA generator simply copies the live one
    bn_refresh_batches: int = 8  # batches used to recompute EMA batch-norm stats before sampling/saving
    diffaug: str = "color,translation,cutout"  # DiffAugment policy, comma-separated; "" disables it
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    sample_every: int = 250  # steps between fixed-noise sample grids (one is always written at the end)
    log_every: int = 10  # steps between progress reports with losses
    grid_per_class: int = 8  # columns per class row in the sample grid
    seed: int = 0  # seeds weights, noise, batch sampling and the grid's fixed noise
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N" or "mps"
    amp: bool = True  # mixed precision + channels_last: CUDA bf16/fp16, CPU bf16 where native (wbc_core.precision)
    num_threads: int = 0  # CPU intra-op threads; 0 keeps torch's default
    # torch.compile for G and D: "auto" follows the measurements for this device (wbc_core.compile), "on"/"off" force
    compile: str = "auto"
    # AC-GAN class loss weight: D cross-entropy on real cells, G on fakes; 0 = projection only. Measured on PBC at
    # 64 px, 22 CPU minutes (BENCHMARKS.md), ResNet-18 judge: 0.3 gives acceptance 67% vs 39% without, at the best
    # coverage and FD; 1.0 gives 88% but less variety (coverage 0.29 vs 0.43), so 1.0 is the GPU preset's choice.
    aux_weight: float = 0.3
    quality_every_checkpoint: bool = False  # score each checkpoint with the judge (seconds-minutes on CPU, so off)
    quality_per_class: int = 64  # generated cells per class for those per-checkpoint quality metrics

    def __post_init__(self) -> None:
        # Tolerate lists from JSON for betas, but store a tuple so the config stays hashable.
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        problems = _problems(self)
        if problems:
            raise ValueError("invalid GanConfig: " + "; ".join(problems))

    @property
    def num_stages(self) -> int:
        """Number of 2x up/down-sampling stages between 4x4 and image_size."""
        return {32: 3, 64: 4, 128: 5}[self.image_size]

    @property
    def diffaug_ops(self) -> tuple[str, ...]:
        """The DiffAugment policy as a tuple of op names."""
        return parse_policy(self.diffaug)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (betas as a list)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GanConfig:
        """Build from a dict; unknown keys are ignored and missing keys take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> GanConfig:
        """Copy with some fields changed (re-validated)."""
        return dataclasses.replace(self, **changes)


# Documented starting points (pass as overrides, e.g. GanConfig(**CUDA_PRESET)). The CPU default above is sized for
# two shared cores; on a GPU the same trainer runs a wider net, longer, at 128 px, with per-checkpoint quality.
# Equal learning rates, not TTUR (1e-4/4e-4): on CPU, TTUR with the class head cut judge acceptance from 46.7% to
# 24.6% and moved class identity between classes. Class head 1.0, not 0.3: on an H200 at 64 px (12.5k steps in
# 4 min), 1.0 gave FD ratio 2.5 vs 3.2, acceptance 73% vs 63% and TSTR 0.81 vs 0.80, ahead at every checkpoint
# from 4k steps on, for slightly lower recall (0.55 vs 0.61). BENCHMARKS.md, GAN section, has both curves.
CUDA_PRESET: dict[str, Any] = {
    "image_size": 128, "steps": 40_000, "batch_size": 128, "g_width": 128, "d_width": 128,
    "lr_g": 2e-4, "lr_d": 2e-4, "aux_weight": 1.0, "checkpoint_every": 2000, "sample_every": 1000,
    "quality_every_checkpoint": True, "device": "cuda",
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """Split a DiffAugment policy string into op names ("" or "none" -> no ops)."""
    text = policy.strip().lower()
    if text in ("", "none"):
        return ()
    return tuple(op.strip() for op in text.split(",") if op.strip())


def resolve_device(device: str) -> torch.device:
    """Turn a config device string into a torch.device ("auto" -> cuda if available, else cpu)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Numeric fields and their limit in wbc_core.limits (the UI's widgets take their ranges from there too).
_BOUNDED = (
    ("steps", "gan_steps"), ("batch_size", "gan_batch"), ("z_dim", "gan_z_dim"),
    ("g_width", "gan_width"), ("d_width", "gan_width"),  # below 8 the narrowest layers (width // 2) degenerate
    ("lr_g", "gan_lr"), ("lr_d", "gan_lr"), ("ema_decay", "gan_ema_decay"), ("ema_start", "gan_ema_start"),
    ("bn_refresh_batches", "gan_bn_refresh_batches"), ("checkpoint_every", "gan_every"),
    ("sample_every", "gan_every"), ("log_every", "gan_every"), ("grid_per_class", "gan_grid_per_class"),
    ("seed", "seed"), ("num_threads", "threads"), ("aux_weight", "gan_aux_weight"),
    ("quality_per_class", "quality_cells_per_class"),
)


def _bounded_problem(c: GanConfig, field: str, limit_name: str) -> str | None:
    value = getattr(c, field)
    limit = limits.bound(limit_name)
    if limit.integer and not _is_int(value):  # a config stores true ints (range(steps), tensor shapes)
        return f"{field} must be {limit.rule()}, got {value!r}"
    return limit.problem(value, field)


def _problems(c: GanConfig) -> list[str]:
    p: list[str] = []
    if c.image_size not in IMAGE_SIZES or not _is_int(c.image_size):
        p.append(f"image_size must be one of 32, 64, 128, got {c.image_size!r}")
    p += [msg for field, name in _BOUNDED if (msg := _bounded_problem(c, field, name))]
    if (not isinstance(c.betas, tuple) or len(c.betas) != 2
            or any(limits.bound("gan_beta").problem(b) for b in c.betas)):
        p.append(f"betas must be two numbers in [0, 1), got {c.betas!r}")
    if not isinstance(c.diffaug, str):
        p.append(f"diffaug must be a string, got {c.diffaug!r}")
    else:
        bad = [op for op in parse_policy(c.diffaug) if op not in DIFFAUG_OPS]
        if bad:
            p.append(f"diffaug ops must be among {', '.join(DIFFAUG_OPS)}, got {', '.join(bad)}")
    if not isinstance(c.device, str) or not _DEVICE_RE.match(c.device):
        p.append(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {c.device!r}")
    if c.compile not in COMPILE_REQUESTS:
        p.append(f"compile must be one of {', '.join(COMPILE_REQUESTS)}, got {c.compile!r}")
    if not isinstance(c.amp, bool):
        p.append(f"amp must be a bool, got {c.amp!r}")
    if not isinstance(c.quality_every_checkpoint, bool):
        p.append(f"quality_every_checkpoint must be a bool, got {c.quality_every_checkpoint!r}")
    return p
