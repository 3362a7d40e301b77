"""Class-conditional generator (conditional batch-norm) and projection discriminator (spectral norm)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from wbc_core.gan.config import GanConfig


def stage_channels(width: int, num_stages: int) -> list[int]:
    """Channels at 4x4, 8x8, ... up to the full size: 4*width halving per stage, floored at width // 2."""
    # Halving from 4*width keeps the 64 px generator near 1.2M params at width 64: wide where pixels are few,
    # narrow where they are many, which is what keeps a step cheap on CPU.
    return [max((4 * width) >> i, width // 2) for i in range(num_stages + 1)]


class ConditionalBatchNorm2d(nn.Module):
    """Batch-norm without its own affine; per-class gain and bias come from an embedding."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.channels = channels
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.embed = nn.Embedding(num_classes, 2 * channels)
        with torch.no_grad():  # start as identity: gain 1, bias 0 for every class
            self.embed.weight[:, :channels].fill_(1.0)
            self.embed.weight[:, channels:].zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Normalise x then scale and shift it with class y's parameters."""
        gain, bias = self.embed(y).chunk(2, dim=1)
        return self.bn(x) * gain[:, :, None, None] + bias[:, :, None, None]


class Generator(nn.Module):
    """z + class -> 3xSxS image in [-1, 1]: linear to 4x4, then stride-2 4x4 transposed convs with CBN + ReLU."""

    def __init__(self, num_classes: int, image_size: int = 64, z_dim: int = 128, width: int = 64) -> None:
        super().__init__()
        stages = {32: 3, 64: 4, 128: 5}[image_size]
        ch = stage_channels(width, stages)
        self.num_classes, self.image_size, self.z_dim = num_classes, image_size, z_dim
        self.top_channels = ch[0]
        # BN follows every layer, so their biases would be cancelled anyway.
        self.fc = nn.Linear(z_dim, ch[0] * 16, bias=False)
        self.bn0 = ConditionalBatchNorm2d(ch[0], num_classes)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1, bias=False) for i in range(stages)
        )
        self.bns = nn.ModuleList(ConditionalBatchNorm2d(ch[i + 1], num_classes) for i in range(stages))
        self.to_rgb = nn.Conv2d(ch[-1], 3, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Generate images for noise z [B, z_dim] and class indices y [B]."""
        h = self.fc(z).view(z.shape[0], self.top_channels, 4, 4)
        h = self.act(self.bn0(h, y))
        for up, bn in zip(self.ups, self.bns, strict=True):
            h = self.act(bn(up(h), y))
        return torch.tanh(self.to_rgb(h))


class Discriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018): spectral-normed strided convs; linear(h) + <embed(y), h>."""

    def __init__(self, num_classes: int, image_size: int = 64, width: int = 64, aux_classifier: bool = False) -> None:
        super().__init__()
        stages = {32: 3, 64: 4, 128: 5}[image_size]
        ch = stage_channels(width, stages)[::-1]  # mirror of the generator: narrow at full size, wide at 4x4
        self.downs = nn.ModuleList(
            spectral_norm(nn.Conv2d(3 if i == 0 else ch[i], ch[i + 1], 4, stride=2, padding=1))
            for i in range(stages)
        )
        self.conv4 = spectral_norm(nn.Conv2d(ch[-1], ch[-1], 3, padding=1))  # one more mixing layer at 4x4
        self.linear = spectral_norm(nn.Linear(ch[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, ch[-1]))
        # Optional AC-GAN head on the same pooled features: only built when used, so older checkpoints still load.
        self.classify = spectral_norm(nn.Linear(ch[-1], num_classes)) if aux_classifier else None
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Score images x [B,3,S,S] of classes y [B]; returns logits [B] (higher = more real)."""
        return self.forward_with_class(x, y)[0]

    def forward_with_class(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(realness logits [B], class logits [B, K] or None without the aux head)."""
        h = x
        for down in self.downs:
            h = self.act(down(h))
        h = self.act(self.conv4(h)).sum(dim=(2, 3))  # sum pooling, as in SN-GAN
        cls = self.classify(h) if self.classify is not None else None
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1), cls


def build_networks(config: GanConfig, num_classes: int) -> tuple[Generator, Discriminator]:
    """Fresh generator and discriminator for config and num_classes (on CPU, fp32)."""
    g = Generator(num_classes, config.image_size, config.z_dim, config.g_width)
    d = Discriminator(num_classes, config.image_size, config.d_width, aux_classifier=config.aux_weight > 0)
    return g, d


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@torch.no_grad()
def refresh_bn_stats(g: Generator, class_ids: torch.Tensor, batches: int, batch_size: int, seed: int) -> None:
    """Recompute g's batch-norm running stats from its own current weights, then leave it in eval mode."""
    # Why: an EMA generator averages weights but not BN statistics; the live generator's running stats do not
    # match the averaged weights, and eval-mode samples come out washed out. Re-estimating the stats from a few
    # train-mode forward passes of the EMA weights ("standing statistics", BigGAN) fixes that, and keeps the
    # saved EMA state_dict eval-ready so sampling never depends on batch composition (single-class batches).
    device = next(g.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)  # private RNG: never disturbs training randomness
    class_ids = class_ids.cpu()
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the refresh batches
    g.train()
    try:
        for _ in range(batches):
            z = torch.randn(batch_size, g.z_dim, generator=gen).to(device)
            pick = torch.randint(len(class_ids), (batch_size,), generator=gen)
            g(z, class_ids[pick].to(device))
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        g.eval()
