"""Per-epoch sample order: plain shuffling, class-balanced and/or weighted sampling with replacement."""

from __future__ import annotations

import math

import torch


def check_train_weights(train_weights: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Validate optional per-sample weights (float [N], finite, >= 0, not all zero); returns them as float64 CPU."""
    if train_weights is None:
        return None
    w = torch.as_tensor(train_weights)
    if w.shape != (n,):
        raise ValueError(f"train_weights must have shape [{n}], got {tuple(w.shape)}")
    w = w.detach().to("cpu", torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("train_weights must be finite and >= 0")
    if not w.sum() > 0:
        raise ValueError("train_weights are all zero: nothing to sample")
    return w


def sampling_weights(labels: torch.Tensor, num_classes: int, balanced: bool,
                     train_weights: torch.Tensor | None = None) -> torch.Tensor | None:
    """Unnormalised per-sample sampling probabilities, or None for a plain shuffle of every sample.

    balanced=False: p_i ∝ w_i (w = train_weights, or 1).
    balanced=True: every class with positive total weight gets the same mass, split within the class in
    proportion to w_i: p_i ∝ w_i / sum_{j in class(i)} w_j. So balancing fixes the class mix, and
    train_weights only decide which samples of a class are drawn (e.g. capping the synthetic share).
    """
    if not balanced and train_weights is None:
        return None
    labels = labels.detach().to("cpu", torch.int64)
    w = torch.ones(labels.shape[0], dtype=torch.float64) if train_weights is None else train_weights.double().cpu()
    if balanced:
        class_mass = torch.bincount(labels, weights=w, minlength=num_classes)
        per_sample = class_mass[labels]
        # A class whose samples all have weight 0 drops out instead of producing 0/0 = NaN.
        w = torch.where(per_sample > 0, w / per_sample.clamp_min(1e-300), torch.zeros_like(w))
    return w


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps per epoch: ceil(n / batch_size), so an epoch covers n samples."""
    return max(1, math.ceil(n / batch_size))


def epoch_batches(n: int, batch_size: int, weights: torch.Tensor | None,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches (CPU int64) for one epoch of n samples; sizes differ by at most one and are >= 2 when n >= 2."""
    if weights is None:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    # Near-equal splits instead of drop_last or a ragged tail: no sample is wasted and no batch of
    # one reaches batch norm (which cannot train on a single sample).
    return list(torch.tensor_split(order, steps_per_epoch(n, batch_size)))
