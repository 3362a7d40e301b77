"""From user options to a job's config, in one place: the pages, the CLI and the benches all build their
GanConfig and ClassifierConfig here.

`overrides` are config field names (plus `width` for both GAN widths); None values mean "not given" and are
dropped, so a caller can pass its form or command-line values as they are. Unknown names are refused in
plain words instead of being silently ignored. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wbc_core.classifier.config import ClassifierConfig
from wbc_core.gan.config import CUDA_PRESET, GanConfig

GAN_PRESETS = {"cpu": "CPU: the default networks, sized for a few cores",
               "cuda": "GPU: wider networks, bigger batches, up to 128 px, 40k steps, quality at every checkpoint"}


def suggested_preset() -> str:
    """"cuda" where this machine appears to have a CUDA GPU, else "cpu" (no torch import: the page asks)."""
    from wbc_core.hardware import cuda_visible

    return "cuda" if cuda_visible() else "cpu"


def preset_values(preset: str, dataset_size: int) -> dict[str, Any]:
    """Every GanConfig field of a preset, for the Generate form and `train-gan --preset` (overrides go on top)."""
    if preset not in GAN_PRESETS:
        raise ValueError(f"unknown GAN preset {preset!r}: choose one of {', '.join(GAN_PRESETS)}")
    values = {**GanConfig().to_dict(), "image_size": dataset_size}
    if preset == "cuda":
        # Not above the dataset's working size by default (the user can still pick 128 in the form): a 64 px
        # dataset upsampled to 128 adds compute, not detail.
        values.update({**CUDA_PRESET, "image_size": min(CUDA_PRESET["image_size"], dataset_size)})
    return values


def _given(overrides: dict[str, Any] | None, config_type: type, aliases: tuple[str, ...] = ()) -> dict[str, Any]:
    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in dataclasses.fields(config_type)} | set(aliases)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {config_type.__name__} option{'s' if len(unknown) > 1 else ''}: "
                         f"{', '.join(unknown)}")
    return values


def gan_config(dataset_image_size: int, preset: str | None = None,
               overrides: dict[str, Any] | None = None) -> GanConfig:
    """The GanConfig for a dataset of this working size: the preset (default: the CPU defaults) at that size,
    then the overrides. `width` sets both network widths unless g_width/d_width are given too."""
    values = _given(overrides, GanConfig, aliases=("width",))
    width = values.pop("width", None)
    if width is not None:
        values = {"g_width": width, "d_width": width, **values}
    base = preset_values(preset, dataset_image_size) if preset else {"image_size": dataset_image_size}
    return GanConfig.from_dict({**base, **values})  # ValueError in plain words on bad values


def classifier_config(dataset_image_size: int, overrides: dict[str, Any] | None = None) -> ClassifierConfig:
    """The ClassifierConfig for a dataset of this working size: the defaults, then the overrides."""
    values = _given(overrides, ClassifierConfig)
    return ClassifierConfig.from_dict({"image_size": dataset_image_size, **values})
