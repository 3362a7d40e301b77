"""Loading a trained generator from a checkpoint, sampling cells, and writing sample grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wbc_core.gan.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    nonfinite_tensors,
    write_atomic,
)
from wbc_core.gan.config import GanConfig
from wbc_core.gan.models import Generator

__all__ = ["LoadedGenerator", "latest_checkpoint", "list_checkpoints", "load_generator", "sample_cells"]


@dataclass(frozen=True)
class LoadedGenerator:
    """An eval-mode EMA generator with the config and class list it was trained with."""

    generator: Generator  # EMA weights with refreshed batch-norm stats, eval mode, on `device`
    config: GanConfig  # the training config stored in the checkpoint
    class_names: list[str]  # row i of the generator's class embedding is class_names[i]
    step: int  # training step the checkpoint was written at
    device: str = "cpu"  # where the generator lives


def load_generator(checkpoint: Path, device: str = "cpu") -> LoadedGenerator:
    """Load the EMA generator from a wbc-gan checkpoint; ValueError if the file is not one."""
    data = load_checkpoint(checkpoint, map_location="cpu")
    broken = nonfinite_tensors(data["generator_ema"]) if isinstance(data["generator_ema"], dict) else []
    if broken:
        raise ValueError(
            f"the GAN checkpoint {checkpoint} (step {data['step']}) has NaN or infinite generator weights "
            f"({len(broken)} tensors, e.g. {broken[0]}): training diverged by this step, and it would only make "
            "broken cells. Use an earlier checkpoint of the run, or train again with a lower learning rate"
        )
    config = GanConfig.from_dict(data["config"])
    class_names = [str(c) for c in data["class_names"]]
    g = Generator(len(class_names), config.image_size, config.z_dim, config.g_width)
    try:
        g.load_state_dict(data["generator_ema"])
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint}: generator weights do not match its stored config ({exc})") from exc
    g.to(device).eval().requires_grad_(False)
    return LoadedGenerator(g, config, class_names, int(data["step"]), str(device))


def images_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> contiguous uint8 [B,3,S,S] on CPU."""
    return ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to("cpu", torch.uint8).contiguous()


@torch.no_grad()
def generate(g: Generator, z: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Run g on CPU tensors z, y in batches on g's device; returns uint8 images on CPU."""
    device = next(g.parameters()).device
    out = [images_to_uint8(g(z[i:i + batch_size].to(device), y[i:i + batch_size].to(device)))
           for i in range(0, z.shape[0], batch_size)]
    if not out:
        return torch.empty(0, 3, g.image_size, g.image_size, dtype=torch.uint8)
    return torch.cat(out)


def sample_cells(loaded: LoadedGenerator, class_index: int, n: int, seed: int, batch_size: int = 256) -> torch.Tensor:
    """n generated cells of one class as uint8 [n,3,S,S]; same seed (and batch_size, device) -> same cells."""
    num_classes = len(loaded.class_names)
    if not 0 <= class_index < num_classes:
        raise ValueError(f"class_index must be in [0, {num_classes}), got {class_index}")
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    # All noise is drawn up front on CPU from a private generator, so the cells depend on the seed, not on
    # whatever else used the global RNG; eval-mode BN is per-sample, so another batch_size or device changes
    # only float rounding (at most a level or two of uint8), never which cells come out.
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n, loaded.config.z_dim, generator=gen)
    y = torch.full((n,), class_index, dtype=torch.long)
    g = loaded.generator
    was_training = g.training
    g.eval()
    try:
        cells = generate(g, z, y, batch_size)
    finally:
        g.train(was_training)
    _refuse_constant(cells, loaded, class_index)
    return cells


def _refuse_constant(cells: torch.Tensor, loaded: LoadedGenerator, class_index: int) -> None:
    """A generator that gives one flat image, or the same image for every noise vector, is broken, not creative."""
    n = cells.shape[0]
    if n == 0:
        return
    flat = cells.flatten(1)
    all_flat = bool((flat.amax(dim=1) == flat.amin(dim=1)).all())
    all_same = n > 1 and bool((flat == flat[:1]).all())
    if all_flat or all_same:
        what = "a single flat colour" if all_flat else f"the same image for all {n} noise vectors"
        raise ValueError(
            f"the generator of step {loaded.step} makes {what} for class '{loaded.class_names[class_index]}': "
            "it is broken (diverged or collapsed), so no candidates were made. Use an earlier checkpoint of the "
            "run, or train again"
        )


def grid_noise(config: GanConfig, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (z, y) for a sample grid: one row per class, grid_per_class columns, seeded by config.seed."""
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    # The same column noise in every row makes rows differ only by class, which is easier to judge.
    z = torch.randn(config.grid_per_class, config.z_dim, generator=gen).repeat(num_classes, 1)
    y = torch.arange(num_classes).repeat_interleave(config.grid_per_class)
    return z, y


def tile(images: torch.Tensor, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """uint8 [rows*cols,3,S,S] -> HxWx3 uint8 array with `pad` white pixels between tiles."""
    s = images.shape[-1]
    canvas = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad, 3), 255, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()
    for i in range(min(rows * cols, arr.shape[0])):
        r, c = divmod(i, cols)
        y0, x0 = pad + r * (s + pad), pad + c * (s + pad)
        canvas[y0:y0 + s, x0:x0 + s] = arr[i]
    return canvas


def save_grid(images: torch.Tensor, rows: int, cols: int, path: Path) -> Path:
    """Write a rows x cols PNG grid of uint8 images atomically."""
    canvas = Image.fromarray(tile(images, rows, cols))
    return write_atomic(Path(path), lambda tmp: canvas.save(tmp, format="PNG"))
