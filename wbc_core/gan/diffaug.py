"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every image the discriminator sees."""

from __future__ import annotations

import torch

from wbc_core.gan.config import DIFFAUG_OPS, parse_policy


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """Apply the comma-separated policy ("color,translation,cutout") to images x [B,3,H,W] in [-1, 1]."""
    # Augmenting reals *and* fakes (and keeping the ops differentiable so G still gets gradients) stops a
    # discriminator from memorising a few hundred cells without leaking augmentations into generated images.
    for op in parse_policy(policy):
        if op not in _OPS:
            raise ValueError(f"unknown DiffAugment op {op!r}; expected one of {', '.join(DIFFAUG_OPS)}")
        x = _OPS[op](x)
    return x


def _rand(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)


def rand_color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5), per image."""
    x = x + (_rand(x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio of its size in x and y, filling with zeros."""
    b, c, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (b, 1, 1), device=x.device)
    tx = torch.randint(-sx, sx + 1, (b, 1, 1), device=x.device)
    src_y = torch.arange(h, device=x.device).view(1, h, 1) - ty
    src_x = torch.arange(w, device=x.device).view(1, 1, w) - tx
    inside = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
    # One gather over flattened pixels keeps this a single differentiable op instead of a per-image loop.
    flat = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)
    return out * inside.unsqueeze(1).to(x.dtype)


def rand_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ratio x size per image, centred anywhere (it may be clipped by the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device) - ch // 2
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device) - cw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (ys >= cy) & (ys < cy + ch) & (xs >= cx) & (xs < cx + cw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


_OPS = {"color": rand_color, "translation": rand_translation, "cutout": rand_cutout}
