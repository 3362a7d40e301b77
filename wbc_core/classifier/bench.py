"""Throughput ceiling: epoch time of bare forward/backward/step on preloaded float tensors."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from wbc_core.classifier.config import ClassifierConfig
from wbc_core.classifier.models import autocast, build_model, resolve_device
from wbc_core.classifier.presets import compute_mean_std, normalize
from wbc_core.classifier.sampling import steps_per_epoch
from wbc_core.classifier.train import make_optimizer, make_scheduler, speed_plan
from wbc_core.precision import amp_dtype
from wbc_core.threads import torch_threads
from wbc_core.types import LabelledImages


def compute_limit_epoch_seconds(data: LabelledImages, config: ClassifierConfig,
                                max_batches: int | None = None) -> float:
    """Seconds one training epoch of `data` would take with no sampling, augmentation, eval or logging."""
    if len(data) < 2:
        raise ValueError("need at least 2 images to time a training step")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    device = resolve_device(config.device)
    steps = steps_per_epoch(len(data), config.batch_size)
    timed = steps if max_batches is None else min(steps, max_batches)
    bs = min(config.batch_size, len(data))
    with torch_threads(config.num_threads), \
            torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _time_steps(data, config, device, steps, timed, bs)


def _time_steps(data: LabelledImages, config: ClassifierConfig, device: torch.device, steps: int, timed: int,
                bs: int) -> float:
    k = int(data.labels.max()) + 1
    net = build_model(config.model, max(2, k), config.image_size).to(device)
    use_amp = config.amp and amp_dtype(device) is not None  # same precision decision as the trainer
    # The trainer's eager layout (NHWC where measured faster, wbc_core.compile): a limit in another layout could sit
    # below the trainer itself (it did on the AVX2 EPYC, where eager NHWC measured 1.04-1.13x NCHW).
    eager = speed_plan(config, device, use_amp, 0, request="off")
    memory_format = torch.channels_last if eager.channels_last else torch.contiguous_format
    net.to(memory_format=memory_format)
    # Only the images the timed batches touch are converted, so a 10-batch estimate stays cheap in memory.
    need = min(len(data), (timed + 1) * bs)
    mean, std = compute_mean_std(data.images[:need])
    x = normalize(data.images[:need], mean, std).to(device).contiguous(memory_format=memory_format)
    y = data.labels[:need].to(device)
    optimizer = make_optimizer(net, config, device)
    scheduler = make_scheduler(optimizer, config, (timed + 1) * 2)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype(device) == torch.float16)
    net.train()

    def step(i: int) -> None:
        start = (i * bs) % max(1, need - bs + 1)
        with autocast(device, use_amp):
            logits = net(x[start:start + bs])
        loss = F.cross_entropy(logits.float(), y[start:start + bs], label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

    step(0)  # warm-up: allocator, kernel selection and lazy init are not part of steady-state speed
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(1, timed + 1):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - t0) / timed
    return per_step * steps
