"""GAN training configuration: one frozen dataclass, validated on construction, JSON round-trippable."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

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
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _problems(c: GanConfig) -> list[str]:
    p: list[str] = []
    if c.image_size not in IMAGE_SIZES or not _is_int(c.image_size):
        p.append(f"image_size must be one of 32, 64, 128, got {c.image_size!r}")
    for name, lo in (("steps", 1), ("batch_size", 2), ("z_dim", 1), ("checkpoint_every", 1),
                     ("sample_every", 1), ("log_every", 1), ("grid_per_class", 1), ("bn_refresh_batches", 1)):
        v = getattr(c, name)
        if not _is_int(v) or v < lo:
            p.append(f"{name} must be an integer >= {lo}, got {v!r}")
    # Widths below 8 would make the narrowest layers (width // 2) degenerate.
    for name in ("g_width", "d_width"):
        v = getattr(c, name)
        if not _is_int(v) or not 8 <= v <= 1024:
            p.append(f"{name} must be an integer in [8, 1024], got {v!r}")
    for name in ("lr_g", "lr_d"):
        v = getattr(c, name)
        if not _is_num(v) or not 0 < v < 1:
            p.append(f"{name} must be a number in (0, 1), got {v!r}")
    if (not isinstance(c.betas, tuple) or len(c.betas) != 2
            or not all(_is_num(b) and 0 <= b < 1 for b in c.betas)):
        p.append(f"betas must be two numbers in [0, 1), got {c.betas!r}")
    if not _is_num(c.ema_decay) or not 0 <= c.ema_decay < 1:
        p.append(f"ema_decay must be a number in [0, 1), got {c.ema_decay!r}")
    if not _is_int(c.ema_start) or c.ema_start < 0:
        p.append(f"ema_start must be an integer >= 0, got {c.ema_start!r}")
    if not isinstance(c.diffaug, str):
        p.append(f"diffaug must be a string, got {c.diffaug!r}")
    else:
        bad = [op for op in parse_policy(c.diffaug) if op not in DIFFAUG_OPS]
        if bad:
            p.append(f"diffaug ops must be among {', '.join(DIFFAUG_OPS)}, got {', '.join(bad)}")
    if not _is_int(c.seed) or c.seed < 0:
        p.append(f"seed must be an integer >= 0, got {c.seed!r}")
    if not isinstance(c.device, str) or not _DEVICE_RE.match(c.device):
        p.append(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {c.device!r}")
    if not isinstance(c.amp, bool):
        p.append(f"amp must be a bool, got {c.amp!r}")
    if not _is_num(c.aux_weight) or not 0 <= c.aux_weight <= 10:
        p.append(f"aux_weight must be a number in [0, 10], got {c.aux_weight!r}")
    if not isinstance(c.quality_every_checkpoint, bool):
        p.append(f"quality_every_checkpoint must be a bool, got {c.quality_every_checkpoint!r}")
    if not _is_int(c.quality_per_class) or c.quality_per_class < 2:
        p.append(f"quality_per_class must be an integer >= 2, got {c.quality_per_class!r}")
    if not _is_int(c.num_threads) or c.num_threads < 0:
        p.append(f"num_threads must be an integer >= 0, got {c.num_threads!r}")
    return p
