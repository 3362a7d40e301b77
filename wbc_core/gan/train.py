"""The GAN training loop: balanced on-device batches, hinge loss, EMA generator, grids, checkpoints, resume."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wbc_core.compile import compile_gan_stepper
from wbc_core.gan.checkpoint import (
    checkpoint_dir,
    checkpoint_path,
    is_full,
    lighten_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)
from wbc_core.gan.config import GanConfig, resolve_device
from wbc_core.gan.models import Generator, build_networks, refresh_bn_stats
from wbc_core.gan.sample import generate, grid_noise, save_grid
from wbc_core.gan.step import METRIC_NAMES, GanStepper, speed_plan, synchronize, thread_limit, to_model_input
from wbc_core.types import LabelledImages, ProgressEvent, ProgressFn, ShouldStopFn, never_stop, no_progress

# Architecture fields: a checkpoint can only be resumed under a config that agrees on these.
_ARCH_FIELDS = ("image_size", "z_dim", "g_width", "d_width")


@dataclass(frozen=True)
class GanResult:
    """What a train_gan call did."""

    steps_done: int  # steps completed in total, including any before a resume
    stopped: bool  # True when should_stop() ended the run early
    last_checkpoint: Path  # checkpoint written at the end (resume or sample from it)
    last_grid: Path  # sample grid written at the end
    seconds: float  # wall time of the whole call, setup and final save included
    sec_per_step: float  # loop wall time / steps run in this call (periodic grids and checkpoints included)
    device: str  # device actually used, e.g. "cpu" or "cuda"


@dataclass(frozen=True)
class TrainHooks:
    """What a caller adds to plain GAN training (wbc_core.gan_finetune: the acceptance reward); all optional."""

    # An extra G loss, g_loss(fake, intended classes, latent codes) (GanStepper.g_extra).
    g_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    metrics: Callable[[], dict[str, float]] | None = None  # more metrics for each progress report (means since last)
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)  # more keys in every checkpoint and gan_config.json
    # A fine-tune that starts from a checkpoint of step S: resumed at S, the live generator starts from the EMA
    # weights (the better generator, which all sampling uses), and the EMA warm-up restarts at S, since with the
    # full 0.999 decay a short fine-tune would leave the averaged generator mostly the parent's.
    ema_restart_step: int | None = None


class BalancedSampler:
    """Draws batch indices class-balanced (uniform class, then uniform image within it) from a seeded generator."""

    def __init__(self, labels: torch.Tensor, device: torch.device, seed: int) -> None:
        labels = labels.to(device)
        # Balanced sampling keeps rare cell types (basophils, blasts) from being drowned out in every batch.
        self.classes, counts = torch.unique(labels, sorted=True, return_counts=True)
        self.order = torch.argsort(labels, stable=True)
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def class_picks(self, n: int) -> torch.Tensor:
        """n indices into self.classes, uniform."""
        return torch.randint(len(self.classes), (n,), generator=self.gen, device=self.device)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image indices [n], class labels [n]) for one real batch."""
        pick = self.class_picks(n)
        within = (torch.rand(n, generator=self.gen, device=self.device) * self.counts[pick]).long()
        within = torch.minimum(within, self.counts[pick] - 1)
        return self.order[self.offsets[pick] + within], self.classes[pick]


def _check_inputs(data: LabelledImages, class_names: list[str], config: GanConfig) -> None:
    if len(data) == 0:
        raise ValueError("cannot train a GAN on 0 images")
    size = tuple(data.images.shape[2:])
    if size != (config.image_size, config.image_size):
        raise ValueError(f"images are {size[0]}x{size[1]} but config.image_size is {config.image_size}; "
                         "resize them before calling train_gan")
    if not class_names:
        raise ValueError("class_names must not be empty")
    lo, hi = int(data.labels.min()), int(data.labels.max())
    if lo < 0 or hi >= len(class_names):
        raise ValueError(f"labels must be in [0, {len(class_names)}) to index class_names, got range [{lo}, {hi}]")


def _ema_update(ema: Generator, g: Generator, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * g, for parameters only (BN stats are refreshed separately)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(g.parameters()), 1.0 - decay)


def _rng_state(device: torch.device, sampler: BalancedSampler) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "data": sampler.gen.get_state()}


def _restore_rng(state: dict[str, Any], device: torch.device, sampler: BalancedSampler) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and len(state.get("cuda", [])) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if device.type == sampler.gen.device.type:
        sampler.gen.set_state(state["data"])


def _load_resume(path: Path, config: GanConfig, class_names: list[str]) -> dict[str, Any]:
    state = load_checkpoint(path, map_location="cpu")
    if not is_full(state):
        raise ValueError(f"cannot resume {path}: it is a light (generator-only) checkpoint; resume from the latest one")
    saved = GanConfig.from_dict(state["config"])
    clash = [f"{f}: checkpoint {getattr(saved, f)} vs config {getattr(config, f)}"
             for f in _ARCH_FIELDS if getattr(saved, f) != getattr(config, f)]
    if (saved.aux_weight > 0) != (config.aux_weight > 0):
        clash.append(f"aux classifier head: checkpoint {saved.aux_weight > 0} vs config {config.aux_weight > 0}")
    if clash:
        raise ValueError(f"cannot resume {path}: architecture differs ({'; '.join(clash)})")
    if list(state["class_names"]) != list(class_names):
        raise ValueError(f"cannot resume {path}: class_names differ ({state['class_names']} vs {class_names})")
    return state


def train_gan(data: LabelledImages, class_names: list[str], config: GanConfig, out_dir: Path,
              progress: ProgressFn = no_progress, should_stop: ShouldStopFn = never_stop,
              resume_from: Path | None = None, hooks: TrainHooks | None = None) -> GanResult:
    """Train a class-conditional GAN on data, writing grids and checkpoints under out_dir (hooks: see TrainHooks)."""
    t_call = time.perf_counter()
    _check_inputs(data, class_names, config)
    device = resolve_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config.device is {config.device!r} but CUDA is not available")
    out_dir = Path(out_dir)
    resume = _load_resume(Path(resume_from), config, class_names) if resume_from is not None else None
    with thread_limit(config.num_threads):
        run = _Run(data, class_names, config, out_dir, device, progress, hooks or TrainHooks())
        if resume is not None:
            run.restore(resume)
            if run.hooks.ema_restart_step is not None and run.step == run.hooks.ema_restart_step:
                run.g.load_state_dict(resume["generator_ema"])  # a fine-tune's start (not a resume of it)
            if Path(resume_from).resolve().parent == checkpoint_dir(out_dir).resolve():
                run.last_checkpoint = Path(resume_from)  # lightened once the next full checkpoint is safely written
        return run.loop(should_stop, t_call)


class _Run:
    """State of one train_gan call; split out so the loop body stays readable."""

    def __init__(self, data: LabelledImages, class_names: list[str], config: GanConfig, out_dir: Path,
                 device: torch.device, progress: ProgressFn, hooks: TrainHooks) -> None:
        torch.manual_seed(config.seed)
        self.config, self.class_names, self.out_dir = config, list(class_names), out_dir
        self.device, self.progress, self.hooks = device, progress, hooks
        self.g, self.d = build_networks(config, len(class_names))
        self.stepper = GanStepper(self.g, self.d, config, device)
        self.stepper.g_extra = hooks.g_loss
        # Compiled or eager: decided once per device from measurements, for this run's planned steps, in the layout
        # the plan was measured in (NHWC under mixed precision; in fp32 where a CPU row measured it faster).
        self.speed = speed_plan(config, self.stepper, config.steps)
        self.stepper.use_memory_format(torch.channels_last if self.speed.channels_last else torch.contiguous_format)
        if self.speed.compiled:
            compile_gan_stepper(self.stepper, self.speed)
        self.stepper.on_fallback = lambda message: self.progress(ProgressEvent(
            step=self.step, total=config.steps, metrics={"compiled": 0.0}, message=message))
        self.ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        # The whole uint8 set lives on the device (a few hundred MB at most): a batch is then one gather and one
        # cast, with no DataLoader workers or per-step decoding to wait on.
        self.images = data.images.to(device)
        self.sampler = BalancedSampler(data.labels, device, config.seed)
        # The run folder describes itself even before the first checkpoint lands.
        options = json.dumps({"config": config.to_dict(), "class_names": self.class_names,
                              "speed": self.speed.describe(), **hooks.checkpoint_extra}, indent=2)
        write_atomic(out_dir / "gan_config.json", lambda tmp: tmp.write_text(options))
        self.step = 0
        self.ema_fresh_step = -1  # step at which the EMA's BN stats were last refreshed
        self.last_metrics: dict[str, float] = {}
        self.last_grid: Path | None = None
        self.last_checkpoint: Path | None = None

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, EMA, optimisers, step and RNG streams."""
        self.g.load_state_dict(state["generator"])
        self.ema.load_state_dict(state["generator_ema"])
        self.d.load_state_dict(state["discriminator"])
        self.stepper.load_state_dict(state)
        self.step = int(state["step"])
        _restore_rng(state["rng"], self.device, self.sampler)
        self.last_metrics = {k: float(v) for k, v in state.get("metrics", {}).items()}

    def loop(self, should_stop: ShouldStopFn, t_call: float) -> GanResult:
        """Run steps until config.steps or should_stop(), then write the final grid and checkpoint."""
        c, dev = self.config, self.device
        start_step, stopped = self.step, False
        acc = torch.zeros(len(METRIC_NAMES), device=dev)
        if self.speed.compiled:  # the first step compiles (a minute or more on a CPU): say so before it starts
            self.progress(ProgressEvent(step=self.step, total=c.steps, metrics={},
                                        message=f"{self.speed.reason}; the first step compiles it"))
        window_steps, t_loop = 0, time.perf_counter()
        t_window = t_loop
        ema_start = max(c.ema_start, self.hooks.ema_restart_step or 0)
        while self.step < c.steps:
            if should_stop():
                stopped = True
                break
            idx, y_real = self.sampler.sample(c.batch_size)
            real = to_model_input(self.images[idx], self.stepper.memory_format)
            z = torch.randn(c.batch_size, c.z_dim, device=dev)
            y_fake = self.sampler.classes[self.sampler.class_picks(c.batch_size)]
            acc += self.stepper.step(real, y_real, z, y_fake)
            self.step += 1
            window_steps += 1
            if self.step > ema_start:
                # Warm the decay up (TF ExponentialMovingAverage style): a fixed 0.999 right after ema_start would
                # keep most of the weight on the early, fast-moving generator for ~1000 steps and blur the grids.
                t = self.step - ema_start
                _ema_update(self.ema, self.g, min(c.ema_decay, (1.0 + t) / (10.0 + t)))
            else:  # early weights move too fast for an average to be useful: track the live generator exactly
                with torch.no_grad():
                    torch._foreach_copy_(list(self.ema.parameters()), list(self.g.parameters()))

            s = self.step
            log_now, grid_now, ckpt_now = s % c.log_every == 0, s % c.sample_every == 0, s % c.checkpoint_every == 0
            if not (log_now or grid_now or ckpt_now) or s == c.steps:
                continue  # the final step is reported once, below
            synchronize(dev)
            sps = (time.perf_counter() - t_window) / window_steps
            self._set_metrics(acc / window_steps, sps)
            acc.zero_()
            self._emit(grid_now, ckpt_now, f"step {s}/{c.steps}")
            # Restart the window after saving, so the reported rate is the steady training rate.
            window_steps, t_window = 0, time.perf_counter()

        synchronize(dev)
        t_end = time.perf_counter()
        steps_run = self.step - start_step
        if window_steps:
            self._set_metrics(acc / window_steps, (t_end - t_window) / window_steps)
        how = f"stopped at step {self.step}/{c.steps}" if stopped else f"finished {self.step}/{c.steps} steps"
        self._emit(True, True, how)
        return GanResult(
            steps_done=self.step, stopped=stopped,
            last_checkpoint=self.last_checkpoint, last_grid=self.last_grid,  # type: ignore[arg-type]
            seconds=time.perf_counter() - t_call,
            sec_per_step=(t_end - t_loop) / steps_run if steps_run else 0.0,
            device=str(dev),
        )

    def _set_metrics(self, mean: torch.Tensor, sec_per_step: float) -> None:
        self.last_metrics = dict(zip(METRIC_NAMES, mean.tolist(), strict=True))
        self.last_metrics["sec_per_step"] = sec_per_step
        self.last_metrics["compiled"] = float(self.speed.compiled)
        if self.hooks.metrics is not None:
            self.last_metrics.update(self.hooks.metrics())

    def _emit(self, grid: bool, ckpt: bool, message: str) -> None:
        artifacts: dict[str, str] = {}
        if grid:
            artifacts["grid"] = str(self._save_grid())
        if ckpt:
            artifacts["checkpoint"] = str(self._save_checkpoint())
        m = self.last_metrics
        if m:
            message += f"  loss_d {m['loss_d']:.3f}  loss_g {m['loss_g']:.3f}  {m['sec_per_step']:.3f} s/step"
        self.progress(ProgressEvent(step=self.step, total=self.config.steps, metrics=dict(m),
                                    message=message, artifacts=artifacts))

    def _fresh_ema(self) -> Generator:
        if self.ema_fresh_step != self.step:
            c = self.config
            refresh_bn_stats(self.ema, self.sampler.classes, c.bn_refresh_batches, c.batch_size, c.seed)
            self.ema_fresh_step = self.step
        return self.ema

    def _save_grid(self) -> Path:
        z, y = grid_noise(self.config, len(self.class_names))
        images = generate(self._fresh_ema(), z, y)
        path = self.out_dir / "samples" / f"step_{self.step:06d}.png"
        self.last_grid = save_grid(images, len(self.class_names), self.config.grid_per_class, path)
        return path

    def _save_checkpoint(self) -> Path:
        ema = self._fresh_ema()  # saved EMA weights always carry matching BN stats, so loaders can just eval()
        payload = {
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "step": self.step,
            "generator": self.g.state_dict(),
            "generator_ema": ema.state_dict(),
            "discriminator": self.d.state_dict(),
            **self.stepper.state_dict(),
            "rng": _rng_state(self.device, self.sampler),
            "metrics": dict(self.last_metrics),
            "speed": self.speed.describe(),  # compiled or eager (and any fall-back): the run describes itself
            **self.hooks.checkpoint_extra,
        }
        previous = self.last_checkpoint
        self.last_checkpoint = save_checkpoint(payload, checkpoint_path(self.out_dir, self.step))
        # Only the newest checkpoint keeps D and the optimisers (resume needs nothing older); older ones shrink to
        # the EMA generator, which is all sampling and grids use. The new file is written first, so a crash in
        # between leaves two full files rather than none.
        if previous is not None and previous != self.last_checkpoint and previous.is_file():
            lighten_checkpoint(previous)
        return self.last_checkpoint
