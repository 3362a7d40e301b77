"""Small value types shared by training loops, the job runner and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of processes that only report progress (the page server, selftest jobs)
    import torch


@dataclass(frozen=True)
class ProgressEvent:
    """One report from a training loop to whoever runs it (job runner, CLI, test)."""

    step: int  # steps (GAN) or epochs (classifier) completed so far
    total: int  # steps or epochs planned in all
    metrics: dict[str, float] = field(default_factory=dict)  # name -> value at this step
    message: str = ""  # short human-readable status line
    artifacts: dict[str, str] = field(default_factory=dict)  # e.g. {"grid": path, "checkpoint": path}


ProgressFn = Callable[[ProgressEvent], None]
ShouldStopFn = Callable[[], bool]


def no_progress(_event: ProgressEvent) -> None:
    """Default progress callback: ignore every event."""


def never_stop() -> bool:
    """Default should_stop callback: run to the end."""
    return False


@dataclass(frozen=True)
class LabelledImages:
    """A batch of decoded cells: uint8 images [N, 3, S, S] and int64 class indices [N]."""

    images: torch.Tensor  # uint8, NCHW, values 0..255; never float, so the store stays small
    labels: torch.Tensor  # int64 class index into the dataset's class list

    def __post_init__(self) -> None:
        import torch

        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N,3,S,S], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be [N], got {tuple(self.labels.shape)} for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

