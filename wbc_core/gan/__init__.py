"""Class-conditional GAN for white-blood-cell images: config, networks, DiffAugment, training and sampling.

Names are loaded on first use (PEP 562), so `from wbc_core.gan import GanConfig` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wbc_core.lazy import lazy_attributes

# name -> submodule that defines it
_WHERE = {
    "CHECKPOINT_FORMAT": "checkpoint", "CHECKPOINT_VERSION": "checkpoint", "latest_checkpoint": "checkpoint",
    "latest_full_checkpoint": "checkpoint", "lighten_checkpoint": "checkpoint", "list_checkpoints": "checkpoint",
    "CUDA_PRESET": "config", "GanConfig": "config", "resolve_device": "config",
    "diff_augment": "diffaug",
    "Discriminator": "models", "Generator": "models", "build_networks": "models", "count_params": "models",
    "refresh_bn_stats": "models",
    "LoadedGenerator": "sample", "load_generator": "sample", "sample_cells": "sample",
    "compute_limit_sec_per_step": "step",
    "GanResult": "train", "train_gan": "train",
}

__all__ = [  # the same names the package always exported (tests check they match _WHERE)
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CUDA_PRESET", "Discriminator", "GanConfig", "GanResult", "Generator",
    "LoadedGenerator", "build_networks", "compute_limit_sec_per_step", "count_params", "diff_augment",
    "latest_checkpoint", "latest_full_checkpoint", "lighten_checkpoint", "list_checkpoints", "load_generator",
    "refresh_bn_stats", "resolve_device", "sample_cells", "train_gan",
]


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
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
