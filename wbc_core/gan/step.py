"""One GAN optimisation step (hinge loss, DiffAugment, optional AMP), shared by training and the speed benchmark."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from wbc_core.compile import CompilePlan, Guarded, run_guarded
from wbc_core.compile import plan as compile_plan
from wbc_core.gan.config import GanConfig, resolve_device
from wbc_core.gan.diffaug import diff_augment
from wbc_core.gan.models import Discriminator, Generator, build_networks
from wbc_core.precision import amp_dtype, precision_name
from wbc_core.threads import torch_threads
from wbc_core.types import LabelledImages

METRIC_NAMES = ("loss_d", "loss_g", "d_real", "d_fake")


class GanStepper:
    """Moves a G/D pair to device, owns their optimisers and AMP state, and runs one D then one G update."""

    def __init__(self, g: Generator, d: Discriminator, config: GanConfig, device: torch.device) -> None:
        self.g, self.d, self.policy = g, d, config.diffaug
        self.aux_weight = float(config.aux_weight) if d.classify is not None else 0.0
        self.device = device
        # CUDA: bf16 (no loss scaling) or fp16 with GradScalers; CPU: bf16 where native (1.9x faster steps at
        # 64 px on AVX512-BF16), else fp32. Spectral norm stays fp32 either way (spectral_norm_fp32 below).
        self.amp_dtype: torch.dtype | None = amp_dtype(device) if config.amp else None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes every step, so autotuning pays off
        use_scaler = self.amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=use_scaler)
        # channels_last lets cuDNN use tensor-core kernels under AMP and oneDNN its bf16 kernels (+12% on CPU);
        # in fp32 on CPU it buys little and plain NCHW is kept.
        self.memory_format = torch.channels_last if self.amp_dtype is not None else torch.contiguous_format
        g.to(device, memory_format=self.memory_format)
        d.to(device, memory_format=self.memory_format)
        self.sn_modules = [m for m in d.modules() if parametrize.is_parametrized(m, "weight")]
        self.opt_g = torch.optim.Adam(g.parameters(), lr=config.lr_g, betas=config.betas)
        self.opt_d = torch.optim.Adam(d.parameters(), lr=config.lr_d, betas=config.betas)
        # What step() calls: the modules themselves, or guarded torch.compile'd versions (wbc_core.compile).
        self.g_call: Any = g
        self.d_call: Any = d.forward_with_class
        self.compile_plan: CompilePlan | None = None
        self.on_fallback: Callable[[str], None] | None = None  # told once if a compiled step falls back to eager
        # An extra term of G's loss, extra(fake in [-1, 1], intended classes, latent codes) -> scalar
        # (wbc_core.gan_finetune's acceptance reward and its anchor to the parent); None in plain training.
        # It runs eager, after D's step, under the same autocast.
        self.g_extra: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def use_memory_format(self, memory_format: torch.memory_format) -> None:
        """Run G, D and the batches in this layout from now on (the compile plan's choice, wbc_core.compile)."""
        if memory_format != self.memory_format:
            self.memory_format = memory_format
            self.g.to(memory_format=memory_format)
            self.d.to(memory_format=memory_format)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context when this stepper uses AMP (CUDA, or CPU bf16), else a no-op."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @contextlib.contextmanager
    def spectral_norm_fp32(self) -> Iterator[None]:
        """Compute D's spectrally normalised weights once, in fp32, and reuse them until the context exits."""
        # Under autocast the power iteration's matrix-vector products run in bf16/fp16 and mix dtypes inside
        # torch's parametrization (this has broken before: pytorch#125544) and lose precision; computing the
        # weights outside autocast and caching them avoids both, with one power iteration per D forward.
        no_amp = torch.autocast(device_type=self.device.type, enabled=False) if self.amp_dtype else None
        with parametrize.cached():
            with no_amp or contextlib.nullcontext():
                for m in self.sn_modules:
                    _ = m.weight
            yield

    def step(self, real: torch.Tensor, y_real: torch.Tensor, z: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        """Update D then G once; returns detached fp32 [loss_d, loss_g, d_real, d_fake] without syncing the device."""
        guards = [c for c in (self.g_call, self.d_call) if isinstance(c, Guarded)]
        return run_guarded(guards, lambda: self._step(real, y_real, z, y_fake), self.on_fallback)

    def _step(self, real: torch.Tensor, y_real: torch.Tensor, z: torch.Tensor, y_fake: torch.Tensor) -> torch.Tensor:
        g, d, policy = self.g_call, self.d, self.policy
        b = real.shape[0]
        d.requires_grad_(True)
        with self.spectral_norm_fp32(), self.autocast():
            # One G forward serves both updates: D sees it detached, then G's loss reuses it after D has stepped.
            fake = g(z, y_fake)
            # Real and fake go through D as one batch: half the kernel launches and one power iteration per step.
            both = diff_augment(torch.cat([real, fake.detach()]), policy)
            logits, cls = self.d_call(both, torch.cat([y_real, y_fake]))
            logits = logits.float()
            d_real, d_fake = logits[:b], logits[b:]
            loss_d = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
            if self.aux_weight:
                # AC-GAN's class loss for D on *real* cells only: D learns what makes a basophil a basophil from
                # data, never from the generator's (possibly wrong) fakes, which avoids the class-collapse of
                # training the classifier on fakes too.
                loss_d = loss_d + self.aux_weight * F.cross_entropy(cls[:b].float(), y_real)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()

        d.requires_grad_(False)  # G's update needs gradients w.r.t. D's input only, not D's weights
        try:
            with self.spectral_norm_fp32(), self.autocast():
                adv, cls_fake = self.d_call(diff_augment(fake, policy), y_fake)
                loss_g = -adv.float().mean()
                if self.aux_weight:  # G is pushed to make fakes that D's real-trained head calls the intended class
                    loss_g = loss_g + self.aux_weight * F.cross_entropy(cls_fake.float(), y_fake)
                if self.g_extra is not None:
                    loss_g = loss_g + self.g_extra(fake, y_fake, z).float()
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler_g.scale(loss_g).backward()
            self.scaler_g.step(self.opt_g)
            self.scaler_g.update()
        finally:
            d.requires_grad_(True)
        return torch.stack([loss_d.detach(), loss_g.detach(), d_real.detach().mean(), d_fake.detach().mean()])

    def state_dict(self) -> dict[str, Any]:
        """Optimiser and scaler state for checkpoints."""
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned (scaler state is optional)."""
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state.get("scaler_g") and self.scaler_g.is_enabled():
            self.scaler_g.load_state_dict(state["scaler_g"])
        if state.get("scaler_d") and self.scaler_d.is_enabled():
            self.scaler_d.load_state_dict(state["scaler_d"])


def to_model_input(images_u8: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """uint8 [B,3,S,S] (already on device) -> float [-1, 1] in the model's memory format."""
    return images_u8.float().div_(127.5).sub_(1.0).contiguous(memory_format=memory_format)


@contextlib.contextmanager
def thread_limit(num_threads: int) -> Iterator[None]:
    """Temporarily set torch's CPU thread count (0 = leave it), restoring it afterwards."""
    with torch_threads(num_threads):
        yield


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed_plan(config: GanConfig, stepper: GanStepper, planned_steps: int, request: str | None = None) -> CompilePlan:
    """How a run's steps execute (compiled or eager, NHWC or NCHW; wbc_core.compile), request overriding
    config.compile."""
    dtype = stepper.amp_dtype
    # Measured at 64 px, batch 64, widths 64: the saving per step scales with the work (~ batch, pixels, width^2).
    scale = config.batch_size / 64 * (config.image_size / 64) ** 2 * ((config.g_width + config.d_width) / 128) ** 2
    return compile_plan("gan", stepper.device.type, precision_name(dtype), planned_steps,
                        request=config.compile if request is None else request, amp=dtype is not None, work_scale=scale)


def compute_limit_sec_per_step(data: LabelledImages, config: GanConfig, steps: int = 20) -> float:
    """Seconds per bare G/D step on preloaded tensors (no sampling, EMA, logging, grids or checkpoints)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(data) == 0:
        raise ValueError("data is empty")
    device = resolve_device(config.device)
    with thread_limit(config.num_threads):
        torch.manual_seed(config.seed)
        num_classes = int(data.labels.max()) + 1
        g, d = build_networks(config, num_classes)
        stepper = GanStepper(g, d, config, device)
        # The trainer's eager layout: a limit timed in another one can sit below the trainer (wbc_core.classifier.bench)
        eager = speed_plan(config, stepper, 0, request="off")
        stepper.use_memory_format(torch.channels_last if eager.channels_last else torch.contiguous_format)
        pick = torch.randint(len(data), (config.batch_size,))
        real = to_model_input(data.images[pick].to(device), stepper.memory_format)
        y_real = data.labels[pick].to(device)
        z = torch.randn(config.batch_size, config.z_dim, device=device)
        y_fake = torch.randint(num_classes, (config.batch_size,), device=device)
        for _ in range(3):  # warm-up: allocator, cuDNN autotuning, oneDNN primitive caches
            stepper.step(real, y_real, z, y_fake)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            stepper.step(real, y_real, z, y_fake)
        synchronize(device)
        return (time.perf_counter() - start) / steps
