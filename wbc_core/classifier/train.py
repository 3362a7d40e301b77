"""Classifier training loop: on-device batches and augmentation, one-cycle/cosine schedule, best-by-macro-F1."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wbc_core.classifier.checkpoint import (
    CHECKPOINT_NAME,
    LoadedClassifier,
    atomic_save,
    cpu_state_dict,
    load_classifier,
    make_checkpoint,
)
from wbc_core.classifier.config import ClassifierConfig
from wbc_core.classifier.inference import evaluate, predict_logits, predict_proba, report_from_logits
from wbc_core.classifier.models import (
    WBCClassifier,
    amp_dtype,
    autocast,
    batched_forward,
    build_model,
    load_pretrained_weights,
    resolve_device,
)
from wbc_core.classifier.presets import compute_mean_std, get_train_transform
from wbc_core.classifier.sampling import check_train_weights, epoch_batches, sampling_weights, steps_per_epoch
from wbc_core.compile import CompilePlan, Guarded, run_guarded
from wbc_core.compile import plan as compile_plan
from wbc_core.precision import precision_label, precision_name
from wbc_core.threads import torch_threads
from wbc_core.types import LabelledImages, ProgressEvent, ProgressFn, ShouldStopFn, never_stop, no_progress

__all__ = ["ClassifierResult", "LoadedClassifier", "evaluate", "load_classifier", "predict_logits", "predict_proba",
           "train_classifier", "validate_data", "make_optimizer", "make_scheduler"]

EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "images_per_sec", "lr", "epoch_seconds")
BATCH_METRICS = ("train_loss_running", "images_per_sec", "epoch_fraction", "lr")


@dataclass(frozen=True)
class ClassifierResult:
    """Outcome of train_classifier."""

    checkpoint: Path  # model.pt with the best epoch's weights (always written, even when stopped early)
    best_epoch: int  # 1-based epoch of those weights; 0 = stopped before the first epoch finished
    epochs_done: int  # epochs completed in full
    stopped: bool  # should_stop() ended the run
    early_stopped: bool  # early-stopping patience ran out
    val: dict[str, Any]  # classification_report (+ "loss") of the best weights on the validation set
    seconds: float  # wall time of the whole call
    images_per_sec: float  # training throughput (optimiser steps only, evaluation excluded)
    device: str  # device the model trained on, e.g. "cpu" or "cuda:0"
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics as sent to progress
    world_size: int = 1  # data-parallel processes that trained it (config.workers; DDP when above 1)
    speed: dict[str, Any] = field(default_factory=dict)  # wbc_core.compile plan: compiled or eager, and why


def validate_data(data: LabelledImages, image_size: int, num_classes: int, name: str) -> None:
    """Raise ValueError unless `data` is non-empty, image_size-sized and labelled within range."""
    if len(data) == 0:
        raise ValueError(f"{name} set is empty")
    if tuple(data.images.shape[2:]) != (image_size, image_size):
        raise ValueError(f"{name} images are {tuple(data.images.shape[2:])}, config.image_size is {image_size}; "
                         "resize them before training")
    lo, hi = int(data.labels.min()), int(data.labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} labels span {lo}..{hi}, outside 0..{num_classes - 1} for {num_classes} class names")


def make_optimizer(model: nn.Module, config: ClassifierConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or nesterov SGD; weight decay only on weight matrices/kernels, not on norm scales or biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    # Decaying BN/LN scales and biases only fights normalisation; the usual convention (timm, torchvision refs).
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr, fused=device.type == "cuda")


def make_scheduler(optimizer: torch.optim.Optimizer, config: ClassifierConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step lr schedule over all planned steps: one-cycle, or linear warm-up + cosine to zero."""
    # OneCycleLR divides by the length of its phases, which are zero steps long for very short runs
    # (it raised ZeroDivisionError at 4 steps); such runs fall back to warm-up + cosine.
    if config.schedule == "onecycle" and total_steps >= 8:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps,
                                                   pct_start=0.25, div_factor=25.0, final_div_factor=1e4)
    warmup = max(1, int(0.05 * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_classifier(train: LabelledImages, val: LabelledImages, class_names: list[str], config: ClassifierConfig,
                     out_dir: Path, progress: ProgressFn = no_progress, should_stop: ShouldStopFn = never_stop,
                     train_weights: torch.Tensor | None = None) -> ClassifierResult:
    """Train config.model on `train`, keep the best val macro-F1 weights in out_dir/model.pt, report progress."""
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"need at least 2 class names, got {class_names}")
    validate_data(train, config.image_size, num_classes, "train")
    validate_data(val, config.image_size, num_classes, "val")
    if len(train) < 2:
        raise ValueError("train set needs at least 2 images (batch norm cannot train on one)")
    weights = check_train_weights(train_weights, len(train))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.workers > 1:
        from wbc_core.classifier.distributed import train_distributed  # DDP: this process is rank 0

        return train_distributed(train, val, list(class_names), config, out_dir, progress, should_stop, weights)
    device = resolve_device(config.device)
    with torch_threads(config.num_threads):
        # fork_rng: seeding must not change the caller's global RNG streams (e.g. a GAN job in the same process).
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(config.seed)
            run = _Run(train, val, list(class_names), config, out_dir, device, progress, should_stop, weights)
            return run.fit()


def speed_plan(config: ClassifierConfig, device: torch.device, use_amp: bool, planned_steps: int,
               request: str | None = None) -> CompilePlan:
    """How this run's steps execute (compiled or eager, NHWC or NCHW; wbc_core.compile), request overriding
    config.compile."""
    # Measured on ResNet-18 at 64 px, batch 128: other models are not compiled, other sizes scale the saving.
    scale = config.batch_size / 128 * (config.image_size / 64) ** 2 if config.model == "resnet18" else 0.0
    precision = precision_name(amp_dtype(device) if use_amp else None)
    return compile_plan("classifier", device.type, precision, planned_steps,
                        request=config.compile if request is None else request, amp=use_amp, work_scale=scale)


class _Run:
    """State of one training run; split out of train_classifier to keep each step readable.

    With world > 1 it is one rank of a DistributedDataParallel group (wbc_core.classifier.distributed): every rank
    draws the same global batches of the same frozen set and trains on its shard of each; rank 0 alone validates,
    writes checkpoints and progress, and decides stopping (broadcast to the others).
    """

    def __init__(self, train: LabelledImages, val: LabelledImages, class_names: list[str], config: ClassifierConfig,
                 out_dir: Path, device: torch.device, progress: ProgressFn, should_stop: ShouldStopFn,
                 train_weights: torch.Tensor | None, rank: int = 0, world: int = 1) -> None:
        self.cfg, self.device, self.class_names = config, device, class_names
        self.rank, self.world = rank, world
        self.progress, self.should_stop = progress, should_stop
        self.path = out_dir / CHECKPOINT_NAME
        self.start = time.perf_counter()
        k = len(class_names)
        # Statistics of this training set (real + synthetic as given), stored in the checkpoint.
        self.mean, self.std = compute_mean_std(train.images)
        net = build_model(config.model, k, config.image_size)
        self.pretrained_tensors = load_pretrained_weights(net, config.pretrained_path) if config.pretrained_path else 0
        self.model = WBCClassifier(net, self.mean, self.std, k, config.image_size).to(device)
        # Mixed precision on CUDA, and bf16 on CPUs that run it natively (1.7x faster steps on AVX512-BF16).
        self.use_amp = config.amp and amp_dtype(device) is not None
        # Compiled or eager, NHWC or NCHW: decided once per device from measurements (wbc_core.compile).
        steps_planned = steps_per_epoch(len(train), config.batch_size) * config.epochs
        self.speed = speed_plan(config, device, self.use_amp, steps_planned)
        if self.speed.channels_last:
            self.model.to(memory_format=torch.channels_last)  # tensor cores and oneDNN's bf16 kernels want NHWC
        # uint8 data lives on the device for the whole run: 8.5k 64-px cells are ~100 MB; batches are index gathers.
        self.x_train, self.y_train = train.images.to(device), train.labels.to(device)
        self.x_val, self.y_val = val.images.to(device), val.labels.to(device)
        self.sample_w = sampling_weights(train.labels, k, config.balanced_sampling, train_weights)
        self.generator = torch.Generator().manual_seed(config.seed)  # sampling + augmentation, device-independent
        # Under DDP every rank samples the same global batches (same seed) but augments its shard with its own stream.
        self.augment_generator = self.generator if world == 1 else torch.Generator().manual_seed(
            config.seed + 1 + rank)
        self.train_module: nn.Module = self.model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.train_module = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
            if self.speed.compiled:  # DDP ranks stay eager: compiling was not measured with DDP
                self.speed.compiled, self.speed.reason = False, "eager: data-parallel workers run eager"
        elif self.speed.compiled:
            # Only the training forward is compiled; validation and the checkpoint use self.model itself, so saved
            # keys never carry torch.compile's "_orig_mod." prefix.
            self.train_module = Guarded(self.model, self.speed)
        self.augment = get_train_transform(config.augment)
        self.steps = steps_per_epoch(len(train), config.batch_size)
        self.optimizer = make_optimizer(self.model, config, device)
        self.scheduler = make_scheduler(self.optimizer, config, self.steps * config.epochs)
        fp16 = self.use_amp and amp_dtype(device) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)  # bf16 needs no loss scaling
        self.best_f1, self.best_epoch, self.best_report, self.saved = -1.0, 0, {}, False
        self.train_images, self.train_seconds = 0, 0.0
        self.history: list[dict[str, float]] = []
        self.last_emit = time.perf_counter()
        self.epoch = 1  # the epoch being trained (a fall-back message is reported against it)

    def fit(self) -> ClassifierResult:
        cfg = self.cfg
        stopped = early = False
        epochs_done = since_best = 0
        loaded = f", {self.pretrained_tensors} tensors from {cfg.pretrained_path}" if self.pretrained_tensors else ""
        # An immediate event so the UI shows life before the first (possibly slow) batches finish.
        start = {"epoch_fraction": 0.0, **({"world_size": float(self.world)} if self.world > 1 else {})}
        ranks = f", {self.world} DDP workers" if self.world > 1 else ""
        self._emit(0, start, f"training {cfg.model} on {len(self.x_train)} cells, "
                   f"{self.steps} batches/epoch, {precision_label(self.device, self.use_amp)}{loaded}{ranks}; "
                   f"{self.speed.reason}")
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            train_loss, ips, stopped = self._train_epoch(epoch)
            if stopped:
                break
            epochs_done = epoch
            if self.rank > 0:  # rank 0 validates and decides; the others wait for its word
                if self._agreed(False):
                    early = True
                    break
                continue
            if epoch % cfg.val_every and epoch != cfg.epochs:  # not a validation epoch: report training only
                metrics = {"train_loss": train_loss, "images_per_sec": ips,
                           "lr": float(self.optimizer.param_groups[0]["lr"]), "epoch_seconds": time.perf_counter() - t0}
                self.history.append({"epoch": float(epoch), **metrics})
                self._emit(epoch, metrics, f"epoch {epoch}/{cfg.epochs}: loss {train_loss:.3f} (validated every "
                                           f"{cfg.val_every} epochs)")
                self._agreed(False)  # the other ranks wait for rank 0's word after every epoch
                continue
            self._emit(epoch - 1, {"epoch_fraction": 1.0}, f"epoch {epoch}/{cfg.epochs}: validating")
            report = self._validate()
            improved = report["macro_f1"] > self.best_f1
            if improved:
                self._save_best(epoch, report)
            since_best = epoch - self.best_epoch  # epochs, whichever of them were validated
            metrics = {"train_loss": train_loss, "val_loss": report["loss"], "val_accuracy": report["accuracy"],
                       "val_macro_f1": report["macro_f1"], "images_per_sec": ips,
                       "lr": float(self.optimizer.param_groups[0]["lr"]), "epoch_seconds": time.perf_counter() - t0,
                       "best_val_macro_f1": self.best_f1, "compiled": float(self.speed.compiled)}
            self.history.append({"epoch": float(epoch), **metrics})
            note = " (best)" if improved else f" (best {self.best_f1:.3f} @ {self.best_epoch})"
            self._emit(epoch, metrics, f"epoch {epoch}/{cfg.epochs}: loss {train_loss:.3f}, val acc "
                       f"{report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}{note}")
            if self._agreed(bool(cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience)):
                early = True
                break
        if not self.saved and self.rank == 0:
            # Stopped before any epoch finished: still leave a usable, evaluated checkpoint behind.
            self._save_best(0, self._validate())
        return ClassifierResult(
            checkpoint=self.path, best_epoch=self.best_epoch, epochs_done=epochs_done, stopped=stopped,
            early_stopped=early, val=self.best_report, seconds=time.perf_counter() - self.start,
            images_per_sec=self.train_images / self.train_seconds if self.train_seconds > 0 else 0.0,
            device=str(self.device), history=self.history, world_size=self.world, speed=self.speed.describe(),
        )

    def _agreed(self, flag: bool) -> bool:
        """Rank 0's flag (stop now, early stop) on every rank; just the flag in a single process."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1 if flag and self.rank == 0 else 0], dtype=torch.int32, device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def _shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch: every world-th index from its rank on (all of it in one process).

        The DistributedSampler rule (indices[rank::world]) applied per batch rather than per epoch, so weighted and
        balanced sampling keep working and each step's global batch is the one a single process would draw."""
        return idx if self.world == 1 else idx[self.rank::self.world]

    def _train_epoch(self, epoch: int) -> tuple[float, float, bool]:
        """One pass over the sampled epoch; returns (mean train loss, images/s, stopped)."""
        cfg, dev = self.cfg, self.device
        self.epoch = epoch
        self.model.train()
        batches = epoch_batches(len(self.x_train), cfg.batch_size, self.sample_w, self.generator)
        loss_sum = torch.zeros((), device=dev)
        seen, t0 = 0, time.perf_counter()
        mine = 0  # cells this rank trained on (seen counts the global batches)
        for i, idx in enumerate(batches):
            if self._agreed(self.rank == 0 and self.should_stop()):  # rank 0 reads the cancel flag for all
                self._account(seen, t0)
                return (float(loss_sum) / mine if mine else 0.0), 0.0, True
            part = self._shard(idx)
            loss = self._step(part.to(dev, non_blocking=True))
            loss_sum += loss * part.numel()
            mine += part.numel()
            seen += idx.numel()
            if time.perf_counter() - self.last_emit >= cfg.progress_every_s:
                running = float(loss_sum) / mine  # .item() syncs the GPU, so elapsed time below is honest
                metrics = {"train_loss_running": running, "images_per_sec": seen / (time.perf_counter() - t0),
                           "epoch_fraction": (i + 1) / len(batches), "lr": float(self.optimizer.param_groups[0]["lr"])}
                self._emit(epoch - 1, metrics, f"epoch {epoch}/{cfg.epochs}: batch {i + 1}/{len(batches)}, "
                           f"loss {running:.3f}")
        mean_loss = float(loss_sum) / mine if self.world == 1 else self._mean_over_ranks(loss_sum, mine)
        elapsed = self._account(seen, t0)
        return mean_loss, seen / elapsed if elapsed > 0 else 0.0, False

    def _mean_over_ranks(self, loss_sum: torch.Tensor, count: int) -> float:
        import torch.distributed as dist

        total = torch.stack([loss_sum.float(), torch.tensor(float(count), device=loss_sum.device)])
        dist.all_reduce(total)
        return float(total[0]) / float(total[1])

    def _step(self, idx: torch.Tensor) -> torch.Tensor:
        guards = [self.train_module] if isinstance(self.train_module, Guarded) else []
        return run_guarded(guards, lambda: self._step_once(idx), self._fell_back)

    def _fell_back(self, message: str) -> None:
        self._emit(self.epoch - 1, {"compiled": 0.0}, message)

    def _step_once(self, idx: torch.Tensor) -> torch.Tensor:
        # Gather uint8 on device, convert to 0..1 float, augment per sample; the model normalises itself.
        x = self.augment(self.x_train[idx].float().div_(255.0), generator=self.augment_generator)
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.y_train[idx]
        with autocast(self.device, self.use_amp):
            logits = self.train_module(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach()

    def _account(self, seen: int, t0: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        self.train_images += seen
        self.train_seconds += elapsed
        return elapsed

    def _validate(self) -> dict[str, Any]:
        logits = batched_forward(self.model, self.x_val, max(256, self.cfg.batch_size), self.device)
        return report_from_logits(logits, self.y_val.cpu(), self.class_names)

    def _save_best(self, epoch: int, report: dict[str, Any]) -> None:
        self.best_f1, self.best_epoch, self.best_report, self.saved = report["macro_f1"], epoch, report, True
        ckpt = make_checkpoint(self.cfg, self.class_names, epoch, self.best_f1, cpu_state_dict(self.model.net),
                               self.mean, self.std, report)
        ckpt["speed"] = self.speed.describe()  # compiled or eager, and why: the run describes itself
        atomic_save(ckpt, self.path)

    def _emit(self, step: int, metrics: dict[str, float], message: str) -> None:
        self.last_emit = time.perf_counter()
        # Only point at model.pt once this run wrote it; an older file from a previous run must not leak through.
        artifacts = {"checkpoint": str(self.path)} if self.saved else {}
        self.progress(ProgressEvent(step=step, total=self.cfg.epochs, metrics=metrics, message=message,
                                    artifacts=artifacts))

