"""Named augmentation presets, applied to whole batches on the device (no PIL, no per-image Python).

Like torchvision's references/classification/presets.py, every preset is defined once here and looked up
by name, so a config string fully describes the augmentation. Transforms take uint8 [N,3,H,W] or float
[N,3,H,W] in [0, 1] and return the same dtype and shape; randomness is drawn per sample from an optional
CPU torch.Generator so runs are reproducible regardless of the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

BatchTransform = Callable[..., torch.Tensor]  # (x, generator=None) -> x'


@dataclass(frozen=True)
class AugmentPreset:
    """Parameters of one augmentation preset; zero / False disables a component."""

    hflip: bool  # random horizontal flip with p = 0.5 per sample
    vflip: bool  # random vertical flip with p = 0.5 per sample
    rot90: bool  # random rotation by 0/90/180/270 degrees per sample (cells have no canonical orientation)
    brightness: float  # multiply by a factor in [1 - b, 1 + b]
    contrast: float  # blend with the image's mean grey by a factor in [1 - c, 1 + c]
    saturation: float  # blend with the per-pixel grey by a factor in [1 - s, 1 + s]
    hue: float  # rotate hue by up to +/- hue of a full turn (0.02 = +/- 7.2 degrees)

    @property
    def has_colour(self) -> bool:
        """True when any colour-jitter component is active."""
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))


# Colour jitter is kept mild: stain differences between smears are real signal for some cell types
# (e.g. eosinophil granules), so large hue/saturation shifts would blur class boundaries.
PRESETS: dict[str, AugmentPreset] = {
    "cell": AugmentPreset(hflip=True, vflip=True, rot90=True, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02),
    # Flips and 90-degree rotations only: a smear has no "up", so these never change what a cell is.
    "geometric": AugmentPreset(hflip=True, vflip=True, rot90=True, brightness=0.0, contrast=0.0, saturation=0.0,
                               hue=0.0),
    "none": AugmentPreset(hflip=False, vflip=False, rot90=False, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0),
}

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)


class BatchAugment:
    """Apply an AugmentPreset to a batch, with independent random parameters per sample."""

    def __init__(self, preset: AugmentPreset) -> None:
        self.preset = preset

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment x (uint8 or float in [0, 1], [N,3,H,W]); returns the same dtype and shape."""
        _check_batch(x)
        p = self.preset
        n = x.shape[0]
        if n == 0:
            return x
        if p.hflip:
            x = _where_samples(_rand(n, generator) < 0.5, x.flip(3), x)
        if p.vflip:
            x = _where_samples(_rand(n, generator) < 0.5, x.flip(2), x)
        if p.rot90 and x.shape[2] == x.shape[3]:
            x = _random_rot90(x, generator)
        if p.has_colour:
            was_uint8 = x.dtype == torch.uint8
            xf = x.float().div_(255.0) if was_uint8 else x
            xf = _colour_jitter(xf, p, generator)
            x = xf.mul(255.0).round_().clamp_(0, 255).to(torch.uint8) if was_uint8 else xf
        return x


class Identity:
    """The "none" / eval transform: returns its input unchanged."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return x as is."""
        _check_batch(x)
        return x


def get_train_transform(name: str) -> BatchTransform:
    """Batch transform for training with preset `name` (a key of PRESETS)."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    if preset == PRESETS["none"]:
        return Identity()
    return BatchAugment(preset)


def get_eval_transform() -> BatchTransform:
    """Batch transform for evaluation: identity (no test-time augmentation; normalisation is separate)."""
    return Identity()


def compute_mean_std(images: torch.Tensor, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (on the 0..1 scale) of uint8 images [N,3,H,W], computed in chunks."""
    _check_batch(images)
    if images.shape[0] == 0:
        raise ValueError("cannot compute normalisation statistics of an empty image set")
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        # float64 accumulation on chunks: exact enough for millions of pixels without a 4-byte copy of all data.
        part = images[start:start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3)).cpu()
        total_sq += part.square().sum(dim=(0, 2, 3)).cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)  # flat images must not divide by 0
    return [float(v) for v in mean], [float(v) for v in std]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) [N,3,H,W] -> float32 standardised with per-channel mean/std (0..1 scale)."""
    _check_batch(x)
    xf = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    m = torch.as_tensor(mean, dtype=xf.dtype, device=xf.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=xf.dtype, device=xf.device).view(1, 3, 1, 1)
    return (xf - m) / s


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a batch [N,3,H,W], got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {x.dtype}")


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    # Random numbers come from the CPU generator (tiny: one per sample) so results do not depend on the device.
    return torch.rand(n, generator=generator)


def _where_samples(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.to(a.device).view(-1, 1, 1, 1), a, b)


def _random_rot90(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    k = torch.randint(0, 4, (x.shape[0],), generator=generator).to(x.device)
    out = x.clone()
    for turns in (1, 2, 3):
        idx = (k == turns).nonzero(as_tuple=True)[0]
        if idx.numel():
            out[idx] = torch.rot90(x[idx], turns, dims=(2, 3))
    return out


def _uniform(n: int, spread: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (1.0 + (torch.rand(n, generator=generator) * 2.0 - 1.0) * spread).to(device).view(-1, 1, 1, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _colour_jitter(x: torch.Tensor, p: AugmentPreset, generator: torch.Generator | None) -> torch.Tensor:
    # Fixed order (brightness, contrast, saturation, hue) rather than torchvision's random order: simpler,
    # and with factors this small the order hardly matters.
    n, dev = x.shape[0], x.device
    if p.brightness > 0:
        x = (x * _uniform(n, p.brightness, generator, dev)).clamp(0, 1)
    if p.contrast > 0:
        mean = _grey(x).mean(dim=(2, 3), keepdim=True)
        x = ((x - mean) * _uniform(n, p.contrast, generator, dev) + mean).clamp(0, 1)
    if p.saturation > 0:
        grey = _grey(x)
        x = ((x - grey) * _uniform(n, p.saturation, generator, dev) + grey).clamp(0, 1)
    if p.hue > 0:
        angle = (torch.rand(n, generator=generator) * 2.0 - 1.0) * p.hue * 2.0 * math.pi
        x = torch.einsum("nij,njhw->nihw", _hue_matrices(angle).to(device=dev, dtype=x.dtype), x).clamp(0, 1)
    return x


def _hue_matrices(angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N,3,3] about the grey axis (1,1,1)/sqrt(3): a hue shift that keeps grey pixels grey."""
    # Rodrigues' formula; a batched 3x3 matmul is far cheaper than an RGB->HSV->RGB round trip.
    k = torch.full((3,), 1.0 / math.sqrt(3.0))
    kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    kk = torch.outer(k, k)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    return cos * torch.eye(3) + sin * kx + (1.0 - cos) * kk
