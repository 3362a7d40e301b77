"""Mixed-precision decision: CPU bf16 only where native, fp32 scoring, and both trainers follow it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from wbc_core import precision
from wbc_core.classifier import ClassifierConfig, train_classifier
from wbc_core.classifier.models import batched_forward, build_model
from wbc_core.classifier.train import _Run
from wbc_core.gan.config import GanConfig
from wbc_core.gan.models import build_networks
from wbc_core.gan.step import GanStepper
from wbc_core.types import LabelledImages

CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU does (True) or does not (False) run bf16 natively, whatever this machine has."""

    def set_native(value: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: value)

    return set_native


def tiny(n: int = 24, size: int = 32) -> LabelledImages:
    g = torch.Generator().manual_seed(0)
    return LabelledImages(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                          torch.arange(n) % 3)


def classifier_config(**overrides: object) -> ClassifierConfig:
    base = ClassifierConfig(model="small_cnn", image_size=32, epochs=1, batch_size=8, device="cpu", num_threads=1)
    return replace(base, **overrides)


def test_env_switch_turns_cpu_bf16_off(monkeypatch):
    precision.cpu_has_native_bf16.cache_clear()
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    try:
        assert precision.cpu_has_native_bf16() is False
        assert precision.amp_dtype(CPU) is None
    finally:
        precision.cpu_has_native_bf16.cache_clear()


def test_probe_follows_cpu_feature_flags(monkeypatch):
    precision.cpu_has_native_bf16.cache_clear()
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    try:
        assert precision.cpu_has_native_bf16() is False
        precision.cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
        assert precision.cpu_has_native_bf16() is True
    finally:
        precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_cpu_amp_dtype_and_label(native_bf16, native, expected):
    native_bf16(native)
    assert precision.amp_dtype(CPU) is expected
    assert precision.precision_label(CPU, enabled=True) == ("cpu bf16" if native else "cpu fp32")
    assert precision.precision_label(CPU, enabled=False) == "cpu fp32"


@pytest.mark.parametrize("native, amp, expect_amp", [(True, True, True), (True, False, False), (False, True, False)])
def test_classifier_uses_bf16_and_channels_last_only_when_native_and_asked(native_bf16, tmp_path, native, amp,
                                                                             expect_amp):
    native_bf16(native)
    data = tiny()
    run = _Run(data, data, ["a", "b", "c"], classifier_config(amp=amp), tmp_path, CPU, lambda e: None,
               lambda: False, None)
    assert run.use_amp is expect_amp
    conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is expect_amp
    loss = run._step(torch.arange(8))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in run.model.parameters())  # master weights stay fp32


def test_bf16_training_reports_precision_and_finishes(native_bf16, tmp_path):
    native_bf16(True)
    events = []
    data = tiny()
    result = train_classifier(data, data, ["a", "b", "c"], classifier_config(), tmp_path, events.append)
    assert result.checkpoint.is_file()
    assert "cpu bf16" in events[0].message


def test_scoring_stays_fp32_on_cpu_even_where_training_uses_bf16(native_bf16):
    torch.manual_seed(0)
    net = build_model("small_cnn", 3, 32)
    images = tiny().images
    native_bf16(False)
    fp32 = batched_forward(torch.nn.Sequential(_Scale(), net), images)
    native_bf16(True)
    same = batched_forward(torch.nn.Sequential(_Scale(), net), images)
    # bf16 would change logits in the 3rd significant digit; fp32 scoring reproduces them bit for bit.
    assert torch.equal(fp32, same)


@pytest.mark.parametrize("native", [True, False])
def test_gan_stepper_follows_the_cpu_decision(native_bf16, native):
    native_bf16(native)
    cfg = GanConfig(image_size=32, batch_size=8, g_width=8, d_width=8, z_dim=16, device="cpu")
    g, d = build_networks(cfg, num_classes=3)
    stepper = GanStepper(g, d, cfg, CPU)
    assert stepper.amp_dtype is (torch.bfloat16 if native else None)
    assert stepper.memory_format == (torch.channels_last if native else torch.contiguous_format)
    off = GanStepper(*build_networks(cfg, num_classes=3), replace(cfg, amp=False), CPU)
    assert off.amp_dtype is None
    real, y, z = torch.rand(8, 3, 32, 32) * 2 - 1, torch.arange(8) % 3, torch.randn(8, cfg.z_dim)
    metrics = stepper.step(real.contiguous(memory_format=stepper.memory_format), y, z, y)
    assert torch.isfinite(metrics).all()


class _Scale(torch.nn.Module):
    """uint8-range float -> 0..1, standing in for the classifier wrapper's normalisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0


CUDA = torch.device("cuda")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_picks_bf16_only_on_native_hardware(monkeypatch, native, expected):
    seen = {}

    def is_bf16_supported(including_emulation=True):
        seen["including_emulation"] = including_emulation
        return native or including_emulation  # what torch answers on a T4/V100: True only with emulation

    monkeypatch.delenv(precision.CUDA_AMP_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert precision.amp_dtype(CUDA) is expected
    assert seen["including_emulation"] is False


def test_cuda_probe_works_with_a_torch_without_the_emulation_argument(monkeypatch):
    monkeypatch.delenv(precision.CUDA_AMP_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision.amp_dtype(CUDA) is torch.float16


@pytest.mark.parametrize("forced, expected", [("fp16", torch.float16), ("BF16", torch.bfloat16)])
def test_env_forces_the_cuda_dtype(monkeypatch, forced, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: forced == "fp16")
    monkeypatch.setenv(precision.CUDA_AMP_ENV, forced)
    assert precision.amp_dtype(CUDA) is expected
    assert precision.precision_label(CUDA, enabled=True) == f"cuda {'fp16' if forced == 'fp16' else 'bf16'}"


def test_env_rejects_an_unknown_cuda_dtype(monkeypatch):
    monkeypatch.setenv(precision.CUDA_AMP_ENV, "fp8")
    with pytest.raises(ValueError, match="WBC_CUDA_AMP_DTYPE must be 'fp16' or 'bf16'"):
        precision.amp_dtype(CUDA)
