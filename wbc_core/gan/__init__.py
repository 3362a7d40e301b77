"""Class-conditional GAN for white-blood-cell images: config, networks, DiffAugment, training and sampling."""

from wbc_core.gan.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    latest_checkpoint,
    latest_full_checkpoint,
    lighten_checkpoint,
    list_checkpoints,
)
from wbc_core.gan.config import CUDA_PRESET, GanConfig, resolve_device
from wbc_core.gan.diffaug import diff_augment
from wbc_core.gan.models import Discriminator, Generator, build_networks, count_params, refresh_bn_stats
from wbc_core.gan.sample import LoadedGenerator, load_generator, sample_cells
from wbc_core.gan.step import compute_limit_sec_per_step
from wbc_core.gan.train import GanResult, train_gan

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CUDA_PRESET",
    "Discriminator",
    "GanConfig",
    "GanResult",
    "Generator",
    "LoadedGenerator",
    "build_networks",
    "compute_limit_sec_per_step",
    "count_params",
    "diff_augment",
    "latest_checkpoint",
    "latest_full_checkpoint",
    "lighten_checkpoint",
    "list_checkpoints",
    "load_generator",
    "refresh_bn_stats",
    "resolve_device",
    "sample_cells",
    "train_gan",
]
