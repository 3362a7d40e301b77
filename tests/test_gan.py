"""Tests for wbc_core.gan: config, networks, DiffAugment, training loop, checkpoints and sampling."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from wbc_core.gan import (
    CHECKPOINT_FORMAT,
    Discriminator,
    GanConfig,
    Generator,
    build_networks,
    compute_limit_sec_per_step,
    count_params,
    diff_augment,
    latest_checkpoint,
    list_checkpoints,
    load_generator,
    refresh_bn_stats,
    sample_cells,
    train_gan,
)
from wbc_core.gan.step import GanStepper
from wbc_core.types import LabelledImages, ProgressEvent

CLASSES = ["neutrophil", "lymphocyte", "basophil"]


def tiny_config(**changes: object) -> GanConfig:
    """A 32 px, width-16 config that trains in milliseconds per step on CPU."""
    # One thread: these nets are too small to gain from two, and on a busy box OpenMP threads spin-wait.
    base = dict(image_size=32, steps=8, batch_size=8, g_width=16, d_width=16, z_dim=32, log_every=2,
                sample_every=4, checkpoint_every=4, grid_per_class=3, ema_start=2, ema_decay=0.9,
                bn_refresh_batches=2, device="cpu", num_threads=1, aux_weight=0.0)  # aux head: opt-in here
    base.update(changes)
    return GanConfig(**base)  # type: ignore[arg-type]


def tiny_data(n: int = 24, size: int = 32, classes: int = 3) -> LabelledImages:
    """Random-texture cells with a per-class tint; class 2 is deliberately rare (2 images)."""
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % (classes - 1)
    labels[:2] = classes - 1
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    images[:, 0] = (images[:, 0] // 2 + 100 * (labels == 0).view(-1, 1, 1)).to(torch.uint8)
    return LabelledImages(images, labels)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: single-threaded, restored after


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, list[ProgressEvent], Path]:
    """One tiny run shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("gan_run")
    events: list[ProgressEvent] = []
    result = train_gan(tiny_data(), CLASSES, tiny_config(), out, progress=events.append)
    return result, events, out


# --- config -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 48}, "image_size must be one of 32, 64, 128, got 48"),
        ({"steps": 0}, "steps must be a whole number from 1 to 1,000,000, got 0"),
        ({"steps": 10**23}, "steps must be a whole number from 1 to 1,000,000, got 100,000,000,000,000,000,000,000"),
        ({"steps": 1e23}, "steps must be a whole number from 1 to 1,000,000, got 1e+23"),
        ({"batch_size": 1}, "batch_size must be a whole number from 2 to 1,024"),
        ({"batch_size": 100_000}, "batch_size must be a whole number from 2 to 1,024, got 100,000"),
        ({"g_width": 4}, "g_width must be a whole number from 8 to 1,024, got 4"),
        ({"lr_d": 0.0}, "lr_d must be a number above 0 and below 1"),
        ({"aux_weight": float("nan")}, "aux_weight must be a number from 0 to 10, got nan"),
        ({"betas": (0.5, 1.0)}, "betas must be two numbers in [0, 1)"),
        ({"ema_decay": 1.0}, "ema_decay must be a number at least 0 and below 1"),
        ({"diffaug": "color,flip"}, "diffaug ops must be among color, translation, cutout, got flip"),
        ({"device": "gpu"}, "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"),
        ({"num_threads": -1}, "num_threads must be a whole number from 0 to 1,024"),
        ({"amp": "yes"}, "amp must be a bool"),
    ],
)
def test_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        GanConfig(**changes)
    assert message in str(info.value)


def test_config_defaults_and_dict_round_trip() -> None:
    c = GanConfig()
    assert (c.image_size, c.steps, c.batch_size, c.z_dim, c.betas) == (64, 3000, 64, 128, (0.0, 0.99))
    d = json.loads(json.dumps(c.to_dict()))
    assert d["betas"] == [0.0, 0.99]
    assert GanConfig.from_dict(d) == c
    # Unknown keys are ignored, missing keys fall back to defaults, JSON lists become tuples.
    c2 = GanConfig.from_dict({"image_size": 32, "betas": [0.5, 0.9], "from_the_future": 1})
    assert c2 == GanConfig(image_size=32, betas=(0.5, 0.9))
    assert c.num_stages == 4 and GanConfig(image_size=128).num_stages == 5
    assert GanConfig(diffaug="").diffaug_ops == ()


# --- networks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "stages"), [(32, 3), (64, 4), (128, 5)])
def test_network_shapes(size: int, stages: int) -> None:
    torch.manual_seed(0)
    g, d = build_networks(GanConfig(image_size=size, g_width=16, d_width=16, z_dim=32), num_classes=4)
    assert len(g.ups) == stages and len(d.downs) == stages
    y = torch.tensor([0, 1, 2, 3])
    x = g(torch.randn(4, 32), y)
    assert x.shape == (4, 3, size, size)
    assert x.min() >= -1 and x.max() <= 1
    out = d(x, y)
    assert out.shape == (4,) and torch.isfinite(out).all()


def test_generator_size_at_default_width() -> None:
    g, _ = build_networks(GanConfig(), num_classes=8)
    assert 1_000_000 <= count_params(g) <= 2_000_000


def test_discriminator_is_spectrally_normalised_and_projects_class() -> None:
    d = Discriminator(num_classes=3, image_size=32, width=16)
    layers = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert layers and all(hasattr(m, "parametrizations") and "weight" in m.parametrizations for m in layers)
    d.eval()
    x = torch.randn(2, 3, 32, 32)
    same = torch.stack([x[0], x[0]])
    # The class projection term must make the score depend on the label for the same image.
    scores = d(same, torch.tensor([0, 1]))
    assert scores[0] != scores[1]


def test_generator_is_class_conditional() -> None:
    torch.manual_seed(0)
    g = Generator(num_classes=2, image_size=32, z_dim=16, width=16)
    with torch.no_grad():
        g.bn0.embed.weight[1, g.bn0.channels:] += 1.0  # give class 1 its own bias
        z = torch.randn(4, 16)
        g.eval()
        assert not torch.allclose(g(z, torch.zeros(4, dtype=torch.long)), g(z, torch.ones(4, dtype=torch.long)))


# --- DiffAugment ---------------------------------------------------------------------------------------------


def test_diff_augment_keeps_shape_and_gradients() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32, requires_grad=True)
    y = diff_augment(x, "color,translation,cutout")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert diff_augment(x, "") is x


def test_diff_augment_translation_and_cutout_zero_fill() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 3, 32, 32)
    t = diff_augment(x, "translation")
    zero_frac = (t == 0).float().mean(dim=(1, 2, 3))
    assert zero_frac.max() > 0 and zero_frac.max() <= 1 - (28 / 32) ** 2 + 1e-6  # at most 4 px each way
    c = diff_augment(x, "cutout")
    holes = (c[:, 0] == 0).float().sum(dim=(1, 2))
    assert holes.max() == 16 * 16 and holes.min() > 0  # a 16x16 square, clipped at the border
    assert ((c == 0).all(dim=1) | (c == 1).all(dim=1)).all()  # same hole in every channel
    with pytest.raises(ValueError, match="unknown DiffAugment op"):
        diff_augment(x, "rotate")


def test_diff_augment_color_varies_per_image() -> None:
    torch.manual_seed(0)
    x = torch.zeros(8, 3, 8, 8)
    x[:, 0] = 0.5
    means = diff_augment(x, "color").mean(dim=(1, 2, 3))
    assert means.std() > 0.05


# --- training ------------------------------------------------------------------------------------------------


def test_training_reports_progress_and_writes_artifacts(trained) -> None:
    result, events, out = trained
    assert result.steps_done == 8 and not result.stopped and result.device == "cpu"
    assert result.seconds > 0 and result.sec_per_step > 0
    logged = [e for e in events if e.metrics]
    assert [e.step for e in logged] == [2, 4, 6, 8]
    for e in logged:
        assert e.total == 8
        assert set(e.metrics) >= {"loss_d", "loss_g", "d_real", "d_fake", "sec_per_step"}
        assert all(math.isfinite(v) for v in e.metrics.values())
    grids = [e.artifacts["grid"] for e in events if "grid" in e.artifacts]
    ckpts = [e.artifacts["checkpoint"] for e in events if "checkpoint" in e.artifacts]
    assert grids == [str(out / "samples" / f"step_{s:06d}.png") for s in (4, 8)]
    assert ckpts == [str(out / "checkpoints" / f"step_{s:06d}.pt") for s in (4, 8)]
    assert result.last_grid == out / "samples" / "step_000008.png"
    assert result.last_checkpoint == out / "checkpoints" / "step_000008.pt"
    with Image.open(result.last_grid) as im:
        # One row per class, grid_per_class columns, 2 px gaps.
        assert im.size == (3 * 34 + 2, 3 * 34 + 2)
        assert np.asarray(im).std() > 5
    assert not list(out.rglob("*.tmp"))
    options = json.loads((out / "gan_config.json").read_text())
    assert options["class_names"] == CLASSES and GanConfig.from_dict(options["config"]) == tiny_config()


def test_checkpoint_is_self_describing(trained) -> None:
    result, _, _ = trained
    ck = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert ck["format"] == CHECKPOINT_FORMAT and ck["format_version"] == 1
    assert ck["class_names"] == CLASSES and ck["step"] == 8
    assert GanConfig.from_dict(ck["config"]) == tiny_config()
    for key in ("generator", "generator_ema", "discriminator", "opt_g", "opt_d", "rng"):
        assert key in ck
    assert list_checkpoints(result.last_checkpoint.parent.parent) == [
        (4, result.last_checkpoint.with_name("step_000004.pt")), (8, result.last_checkpoint)]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_generator_refuses_foreign_files(tmp_path: Path) -> None:
    foreign = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(ValueError, match="not a wbc-gan checkpoint"):
        load_generator(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a torch file")
    with pytest.raises(ValueError, match="not a wbc-gan checkpoint"):
        load_generator(garbage)
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "x": Path("/")}))
    with pytest.raises(ValueError, match="not a wbc-gan checkpoint"):
        load_generator(pickled)
    with pytest.raises(ValueError, match="not found"):
        load_generator(tmp_path / "missing.pt")


def test_sample_cells_is_deterministic_per_seed(trained) -> None:
    result, _, _ = trained
    loaded = load_generator(result.last_checkpoint)
    assert loaded.class_names == CLASSES and loaded.step == 8 and not loaded.generator.training
    a = sample_cells(loaded, 1, 5, seed=7)
    assert a.dtype == torch.uint8 and a.shape == (5, 3, 32, 32)
    assert torch.equal(a, sample_cells(loaded, 1, 5, seed=7))
    # Another batch size may pick other conv kernels: same cells up to rounding.
    assert (a.int() - sample_cells(loaded, 1, 5, seed=7, batch_size=2).int()).abs().max() <= 2
    assert not torch.equal(a, sample_cells(loaded, 1, 5, seed=8))
    assert sample_cells(loaded, 0, 0, seed=1).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="class_index"):
        sample_cells(loaded, 3, 1, seed=0)


def test_should_stop_stops_early_and_checkpoints(tmp_path: Path) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    result = train_gan(tiny_data(), CLASSES, tiny_config(steps=50), tmp_path, should_stop=stop)
    assert result.stopped and result.steps_done == 3
    assert result.last_checkpoint == tmp_path / "checkpoints" / "step_000003.pt"
    assert result.last_checkpoint.is_file() and result.last_grid.is_file()
    assert latest_checkpoint(tmp_path) == result.last_checkpoint


def test_resume_continues_from_saved_step_and_matches_straight_run(tmp_path: Path) -> None:
    cfg = tiny_config(steps=6, checkpoint_every=100, sample_every=100)
    straight = train_gan(tiny_data(), CLASSES, cfg, tmp_path / "straight")

    calls = []
    first = train_gan(tiny_data(), CLASSES, cfg, tmp_path / "split",
                      should_stop=lambda: len(calls) >= 3 or bool(calls.append(1)))
    assert first.stopped and first.steps_done == 3
    events: list[ProgressEvent] = []
    second = train_gan(tiny_data(), CLASSES, cfg, tmp_path / "split", progress=events.append,
                       resume_from=first.last_checkpoint)
    assert second.steps_done == 6 and not second.stopped
    assert [e.step for e in events] == [4, 6]  # log_every=2: steps 1-3 were not run again
    a = torch.load(straight.last_checkpoint, weights_only=True)
    b = torch.load(second.last_checkpoint, weights_only=True)
    for net in ("generator", "generator_ema", "discriminator"):
        for k, v in a[net].items():
            assert torch.allclose(v.float(), b[net][k].float(), atol=1e-5), f"{net}.{k} differs after resume"


def test_resume_refuses_a_different_architecture(trained, tmp_path: Path) -> None:
    result, _, _ = trained
    with pytest.raises(ValueError, match="g_width"):
        train_gan(tiny_data(), CLASSES, tiny_config(g_width=32), tmp_path, resume_from=result.last_checkpoint)
    with pytest.raises(ValueError, match="class_names differ"):
        train_gan(tiny_data(), ["a", "b", "c"], tiny_config(), tmp_path, resume_from=result.last_checkpoint)


def test_train_rejects_bad_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size is 64"):
        train_gan(tiny_data(), CLASSES, tiny_config(image_size=64), tmp_path)
    empty = LabelledImages(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="0 images"):
        train_gan(empty, CLASSES, tiny_config(), tmp_path)
    with pytest.raises(ValueError, match="labels must be in"):
        train_gan(tiny_data(), CLASSES[:2], tiny_config(), tmp_path)


def test_mixed_precision_step_runs() -> None:
    # CPU bf16 autocast stands in for CUDA here, exercising the AMP code path (incl. fp32 spectral norm).
    cfg = tiny_config()
    g, d = build_networks(cfg, num_classes=3)
    stepper = GanStepper(g, d, cfg, torch.device("cpu"))
    stepper.amp_dtype = torch.bfloat16
    real, y, z = torch.rand(8, 3, 32, 32) * 2 - 1, torch.arange(8) % 3, torch.randn(8, cfg.z_dim)
    before = [p.detach().clone() for p in g.parameters()]
    metrics = stepper.step(real, y, z, y)
    assert metrics.dtype == torch.float32 and torch.isfinite(metrics).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, g.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in d.parameters())


def test_compute_limit_sec_per_step_is_positive() -> None:
    sec = compute_limit_sec_per_step(tiny_data(), tiny_config(), steps=2)
    assert math.isfinite(sec) and 0 < sec < 5


@pytest.mark.parametrize("eager_nhwc", [False, True])
def test_the_compute_limit_steps_in_the_trainers_eager_layout(eager_nhwc, monkeypatch) -> None:
    from dataclasses import replace

    from wbc_core import compile as wbc_compile
    from wbc_core.gan import step

    row = wbc_compile.Measured(1.0, 2.0, 1.0, "test", eager_channels_last=eager_nhwc)
    monkeypatch.setattr(wbc_compile, "MEASURED", {("gan", "cpu", "fp32"): row})
    layouts = []
    real_step = step.GanStepper.step

    def spy(self, real, *args):  # noqa: ANN001, ANN002, ANN202
        nhwc = self.memory_format == torch.channels_last
        layouts.append(nhwc and real.is_contiguous(memory_format=torch.channels_last))
        return real_step(self, real, *args)

    monkeypatch.setattr(step.GanStepper, "step", spy)
    compute_limit_sec_per_step(tiny_data(), replace(tiny_config(), amp=False), steps=1)
    assert layouts and set(layouts) == {eager_nhwc}


# --- EMA and batch-norm statistics ----------------------------------------------------------------------------


def test_refresh_bn_stats_matches_eval_to_train_behaviour() -> None:
    torch.manual_seed(0)
    g = Generator(num_classes=2, image_size=32, z_dim=16, width=16)
    with torch.no_grad():
        for p in g.ups.parameters():
            p.mul_(5.0)  # activations now far from the fresh BN stats (mean 0, var 1)
    z, y = torch.randn(64, 16), torch.arange(64) % 2
    with torch.no_grad():
        g.train()
        batch_stats = g(z, y)
        g.eval()
        stale = g(z, y)
    refresh_bn_stats(g, torch.tensor([0, 1]), batches=4, batch_size=64, seed=0)
    assert not g.training
    with torch.no_grad():
        fresh = g(z, y)
    stale_err = (stale - batch_stats).abs().mean()
    fresh_err = (fresh - batch_stats).abs().mean()
    assert fresh_err < 0.05 < stale_err


def test_ema_samples_are_not_washed_out(tmp_path: Path) -> None:
    # A high learning rate moves the weights far, so averaged weights meet stale BN stats unless they are refreshed.
    cfg = tiny_config(steps=30, lr_g=2e-3, lr_d=2e-3, ema_start=0, ema_decay=0.8, checkpoint_every=100)
    result = train_gan(tiny_data(), CLASSES, cfg, tmp_path)
    loaded = load_generator(result.last_checkpoint)
    ck = torch.load(result.last_checkpoint, weights_only=True)
    live = Generator(3, 32, cfg.z_dim, cfg.g_width)
    live.load_state_dict(ck["generator"])
    gen = torch.Generator().manual_seed(3)
    z, y = torch.randn(48, cfg.z_dim, generator=gen), torch.arange(48) % 3
    with torch.no_grad():
        live.train()  # batch statistics: exactly what the discriminator saw during training
        live_std = live(z, y).std()
        ema_std = loaded.generator(z, y).std()
    assert 0.5 < float(ema_std / live_std) < 2.0


def test_overfits_red_versus_blue(tmp_path: Path) -> None:
    n = 32
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    images[labels == 0, 0] = 230  # class 0: solid red
    images[labels == 1, 2] = 230  # class 1: solid blue
    cfg = tiny_config(steps=150, batch_size=16, ema_start=50, ema_decay=0.95, sample_every=1000,
                      checkpoint_every=1000, log_every=50, lr_g=1e-3, lr_d=1e-3)
    result = train_gan(LabelledImages(images, labels), ["red", "blue"], cfg, tmp_path)
    loaded = load_generator(result.last_checkpoint)
    for cls, (near, far) in ((0, (0, 2)), (1, (2, 0))):
        mean = sample_cells(loaded, cls, 16, seed=0).float().mean(dim=(0, 2, 3))
        assert mean[near] > mean[far] + 40, f"class {cls} mean colour {mean.tolist()}"


# --- light checkpoints and the AC-GAN head -----------------------------------------------------------------


def test_only_the_latest_checkpoint_is_full(trained, tmp_path: Path) -> None:
    from wbc_core.gan import latest_full_checkpoint
    from wbc_core.gan.checkpoint import load_checkpoint

    _, _, out = trained
    (step4, old), (step8, new) = list_checkpoints(out)
    assert (step4, step8) == (4, 8)
    light, full = load_checkpoint(old), load_checkpoint(new)
    assert light.get("light") and "discriminator" not in light and "opt_d" not in light
    assert "discriminator" in full and "opt_g" in full
    assert old.stat().st_size * 2 < new.stat().st_size
    assert latest_full_checkpoint(out) == new
    # Both stay usable for sampling: the light one gives the same cells as the EMA weights it kept.
    for path, step in ((old, 4), (new, 8)):
        loaded = load_generator(path)
        assert loaded.step == step and sample_cells(loaded, 0, 3, seed=1).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="light"):
        train_gan(tiny_data(), CLASSES, tiny_config(steps=10), tmp_path / "again", resume_from=old)


def test_resume_lightens_the_checkpoint_it_resumed_from(tmp_path: Path) -> None:
    from wbc_core.gan.checkpoint import load_checkpoint

    first = train_gan(tiny_data(), CLASSES, tiny_config(steps=4), tmp_path)
    second = train_gan(tiny_data(), CLASSES, tiny_config(steps=8), tmp_path, resume_from=first.last_checkpoint)
    assert load_checkpoint(first.last_checkpoint).get("light")
    assert not load_checkpoint(second.last_checkpoint).get("light")


def test_aux_classifier_head_trains_on_real_labels_and_changes_losses() -> None:
    cfg = tiny_config(aux_weight=0.5)
    g, d = build_networks(cfg, 3)
    assert d.classify is not None and build_networks(tiny_config(), 3)[1].classify is None
    assert GanConfig().aux_weight > 0  # the app's default trains with the class head (measured in BENCHMARKS.md)
    data = tiny_data(n=8)
    real = data.images.float() / 127.5 - 1
    z = torch.randn(8, cfg.z_dim)
    torch.manual_seed(0)
    with_aux = GanStepper(g, d, cfg, torch.device("cpu"))
    head_before = d.classify.parametrizations.weight.original.clone()
    losses = with_aux.step(real, data.labels, z, data.labels)
    assert not torch.equal(head_before, d.classify.parametrizations.weight.original)  # D's class head learns
    assert torch.isfinite(losses).all()
    # The class loss is added on top of the hinge loss: positive cross-entropy makes loss_d larger than hinge alone.
    assert float(losses[0]) > 0


def test_resume_refuses_toggling_the_aux_head(trained, tmp_path: Path) -> None:
    result, _, _ = trained
    with pytest.raises(ValueError, match="aux classifier head"):
        train_gan(tiny_data(), CLASSES, tiny_config(steps=12, aux_weight=0.3), tmp_path,
                  resume_from=result.last_checkpoint)


def test_config_validates_quality_and_aux_fields() -> None:
    with pytest.raises(ValueError, match="aux_weight"):
        tiny_config(aux_weight=-1)
    with pytest.raises(ValueError, match="quality_per_class"):
        tiny_config(quality_per_class=1)
    assert GanConfig().quality_every_checkpoint is False and GanConfig().aux_weight == 0.3


def test_presets_are_complete_configs_and_cuda_stays_within_the_dataset_size():
    from wbc_core.gan import CUDA_PRESET
    from wbc_core.gan_runs import preset_values

    cpu = preset_values("cpu", 64)
    assert cpu == {**GanConfig().to_dict(), "image_size": 64}
    cuda = preset_values("cuda", 64)
    assert GanConfig.from_dict(cuda).g_width == CUDA_PRESET["g_width"] and cuda["image_size"] == 64
    assert preset_values("cuda", 128)["image_size"] == 128 and cuda["device"] == "cuda"
    with pytest.raises(ValueError, match="unknown GAN preset 'tpu'"):
        preset_values("tpu", 64)
