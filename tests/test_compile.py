"""Compiled or eager training steps (wbc_core.compile): the amortisation rule, the per-device plan, the fall-backs
to eager (no C++ compiler, a compile error) with their messages, the cache folder, and self-describing runs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from support import skip_unless_ci

from wbc_core import compile as wbc_compile
from wbc_core.classifier import ClassifierConfig, load_classifier, train_classifier
from wbc_core.compile import CompilePlan, Guarded, Measured, compile_gan_stepper, run_guarded, worth_compiling
from wbc_core.gan import train_gan
from wbc_core.gan.config import GanConfig
from wbc_core.gan.models import build_networks
from wbc_core.gan.step import GanStepper
from wbc_core.types import LabelledImages, ProgressEvent

CPU = torch.device("cpu")
CLASSES = ["a", "b", "c"]
FAST = Measured(eager_step_s=1.0, compiled_step_s=0.5, warmup_s=30.0, source="test")


def tiny(n: int = 24, size: int = 32) -> LabelledImages:
    g = torch.Generator().manual_seed(0)
    return LabelledImages(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                          torch.arange(n) % 3)


def classifier_config(**overrides: object) -> ClassifierConfig:
    # augment="none": a step retried after a fall-back then draws nothing twice, so it equals an eager step.
    base = ClassifierConfig(model="small_cnn", image_size=32, epochs=1, batch_size=8, device="cpu", num_threads=1,
                            amp=False, augment="none")
    return replace(base, **overrides)


def tiny_gan_config(**changes: object) -> GanConfig:
    base = dict(image_size=32, steps=2, batch_size=8, g_width=16, d_width=16, z_dim=32, log_every=1,
                sample_every=2, checkpoint_every=2, grid_per_class=2, ema_start=1, bn_refresh_batches=1,
                device="cpu", num_threads=1, aux_weight=0.0, amp=False)
    base.update(changes)
    return GanConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def compile_measured_faster(monkeypatch):
    """Pretend compiling measured 2x faster with a tiny warm-up for both workloads on CPU fp32 (and for any model)."""
    cheap = replace(FAST, warmup_s=1e-6)
    real_plan = wbc_compile.plan

    def any_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the tiny test models count as measured ones
        return real_plan(*args, **{**kwargs, "work_scale": 1.0})

    monkeypatch.setattr("wbc_core.classifier.train.compile_plan", any_model)
    monkeypatch.setattr("wbc_core.gan.step.compile_plan", any_model)
    monkeypatch.setattr(wbc_compile, "MEASURED", {("classifier", "cpu", "fp32"): cheap, ("gan", "cpu", "fp32"): cheap})


@pytest.fixture
def broken_compiler(monkeypatch):
    """torch.compile that hands back a callable failing like generated code that does not build."""

    def fake_compile(fn, **_kwargs):  # noqa: ANN001, ANN202
        def failing(*_args, **_kw):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("C++ compile error: boom")
        return failing

    monkeypatch.setattr(torch, "compile", fake_compile)


# --- the rule ------------------------------------------------------------------------------------------------


def test_worth_compiling_only_when_the_planned_steps_win_back_the_warm_up():
    # 0.5 s saved per step against 30 s of warm-up: 60 steps break even, so 60 is not enough and 61 is.
    assert not worth_compiling(60, FAST)
    assert worth_compiling(61, FAST)
    assert not worth_compiling(10 ** 6, replace(FAST, compiled_step_s=1.0))  # not faster: never
    assert not worth_compiling(10 ** 6, replace(FAST, compiled_step_s=1.2))
    assert not worth_compiling(10 ** 6, None)  # not measured: never
    assert not worth_compiling(100, FAST, work_scale=0.5)  # half the work per step saves half: 100 steps is 25 s
    assert worth_compiling(130, FAST, work_scale=0.5)
    assert not worth_compiling(10 ** 6, FAST, work_scale=0.0)


def test_plan_follows_the_measurements(monkeypatch):
    monkeypatch.setattr(wbc_compile, "c_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(wbc_compile, "MEASURED", {("gan", "cpu", "fp32"): FAST})
    long = wbc_compile.plan("gan", "cpu", "fp32", 3000)
    assert long.compiled and "2.00x" in long.reason
    short = wbc_compile.plan("gan", "cpu", "fp32", 20)
    assert not short.compiled and "20 steps would not win back the 30 s" in short.reason
    unmeasured = wbc_compile.plan("classifier", "cpu", "fp32", 3000)
    assert not unmeasured.compiled and "not measured faster" in unmeasured.reason
    assert not wbc_compile.plan("gan", "cpu", "fp32", 3000, request="off").compiled
    assert wbc_compile.plan("classifier", "cpu", "fp32", 1, request="on").compiled
    # channels_last follows mixed precision (oneDNN bf16, tensor cores); fp32 on CPU stays NCHW.
    assert wbc_compile.plan("gan", "cpu", "bf16", 1, amp=True).channels_last
    assert not long.channels_last
    with pytest.raises(ValueError, match="workload must be one of"):
        wbc_compile.plan("vae", "cpu", "fp32", 1)
    with pytest.raises(ValueError, match="compile must be one of"):
        wbc_compile.plan("gan", "cpu", "fp32", 1, request="yes")


def test_no_cxx_compiler_means_eager_and_says_so(monkeypatch):
    monkeypatch.setattr(wbc_compile, "c_compiler", lambda: "")
    assert "no C++ compiler" in wbc_compile.inductor_problem("cpu")
    forced = wbc_compile.plan("classifier", "cpu", "fp32", 10 ** 6, request="on")
    assert not forced.compiled and forced.reason.startswith("eager: no C++ compiler found")
    assert "not used on mps" in wbc_compile.inductor_problem("mps")


def needs_cxx() -> None:
    if not wbc_compile.c_compiler():
        skip_unless_ci("no C++ compiler here (.ci/run installs g++); the eager fall-back tests still run")


def test_this_machine_finds_its_compiler():
    needs_cxx()
    assert wbc_compile.inductor_problem("cpu") == ""


# --- fall-backs in the trainers -------------------------------------------------------------------------------


def test_classifier_without_compiler_trains_eager_and_tells_the_user(wbc_home, monkeypatch, compile_measured_faster):
    monkeypatch.setattr(wbc_compile, "c_compiler", lambda: "")
    events: list[ProgressEvent] = []
    result = train_classifier(tiny(), tiny(12), CLASSES, classifier_config(), wbc_home / "run",
                              progress=events.append)
    assert result.speed["compiled"] is False and "no C++ compiler" in result.speed["reason"]
    assert "no C++ compiler" in events[0].message
    assert result.history[-1]["compiled"] == 0.0


def test_classifier_compile_error_falls_back_to_eager_with_the_same_losses(wbc_home, compile_measured_faster,
                                                                           broken_compiler, monkeypatch):
    monkeypatch.setattr(wbc_compile, "c_compiler", lambda: "/usr/bin/g++")
    events: list[ProgressEvent] = []
    failed = train_classifier(tiny(), tiny(12), CLASSES, classifier_config(), wbc_home / "failed",
                              progress=events.append)
    messages = [e.message for e in events if "compiled step failed" in e.message]
    assert messages == ["compiled step failed (RuntimeError: C++ compile error: boom); continuing eager"]
    assert failed.speed["compiled"] is False and failed.speed["notes"] == messages
    ckpt = torch.load(failed.checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["speed"]["compiled"] is False and ckpt["speed"]["notes"] == messages

    eager = train_classifier(tiny(), tiny(12), CLASSES, classifier_config(), wbc_home / "eager")
    assert eager.speed["compiled"] is False  # monkeypatched torch.compile aside, the plan is the same
    assert failed.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=1e-6)
    assert failed.val["loss"] == pytest.approx(eager.val["loss"], rel=1e-6)


def test_gan_compile_error_falls_back_to_eager_with_the_same_step(broken_compiler):
    cfg = tiny_gan_config()
    results, plans = [], []
    for broken in (False, True):
        torch.manual_seed(0)
        g, d = build_networks(cfg, 3)
        stepper = GanStepper(g, d, cfg, CPU)
        told: list[str] = []
        stepper.on_fallback = told.append
        if broken:
            plans.append(compile_gan_stepper(stepper))
        torch.manual_seed(1)
        real, z = torch.rand(8, 3, 32, 32) * 2 - 1, torch.randn(8, cfg.z_dim)
        y = torch.arange(8) % 3
        results.append(torch.stack([stepper.step(real, y, z, y) for _ in range(2)]))
    # The failed attempt already ran one power iteration of D's spectral norm, so the retried step is eager but
    # one iteration further along: equal to a tolerance, not bit for bit.
    torch.testing.assert_close(results[1], results[0], rtol=2e-2, atol=2e-2)
    assert not plans[0].compiled and plans[0].notes == told == [
        "compiled step failed (RuntimeError: C++ compile error: boom); continuing eager"]


def test_run_guarded_without_compiled_guards_lets_errors_through():
    guard = Guarded(lambda x: x, CompilePlan(False, False, "eager: test"))
    with pytest.raises(ZeroDivisionError):
        run_guarded([guard], lambda: 1 / 0)


def test_gan_run_records_whether_it_compiled(wbc_home):
    out = wbc_home / "gan"
    result = train_gan(tiny(), CLASSES, tiny_gan_config(), out)
    options = json.loads((out / "gan_config.json").read_text())
    assert options["speed"]["compiled"] is False and options["speed"]["reason"].startswith("eager:")
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["speed"] == options["speed"] and ckpt["metrics"]["compiled"] == 0.0


# --- caches ----------------------------------------------------------------------------------------------------


def test_inductor_cache_lives_in_the_home_per_torch_and_isa(wbc_home, monkeypatch):
    from wbc_core.context import current

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/nowhere")  # restored after the test
    monkeypatch.setenv("TRITON_CACHE_DIR", "/nowhere")
    folder = wbc_compile.configure_cache()
    assert folder is not None and folder.is_dir()
    assert folder.parent == current().paths.cache / "inductor"
    assert torch.backends.cpu.get_cpu_capability().lower() in folder.name and torch.__version__ in folder.name
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)


# --- compiled really matches eager --------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_classifier_matches_eager_and_saves_plain_keys(wbc_home, monkeypatch, compile_measured_faster):
    """The real inductor on a tiny CNN: the same loss trajectory as eager, a checkpoint without _orig_mod."""
    needs_cxx()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(wbc_home / "unused"))  # restored after the test
    import torch._inductor.config as inductor_config

    # small_cnn has dropout: inductor draws its own random numbers unless told to use eager's generator. Through
    # the config's own patch(): monkeypatch would delete the (hidden) option on undo and break torch.export later.
    cfg = classifier_config(epochs=2)
    with inductor_config.patch(fallback_random=True):
        compiled = train_classifier(tiny(), tiny(12), CLASSES, cfg, wbc_home / "compiled")
    assert compiled.speed == {"compiled": True, "channels_last": False, "notes": [],
                              "reason": "compiled: 2.00x eager measured on cpu fp32, warm-up 0 s (test)"}
    monkeypatch.setattr(wbc_compile, "MEASURED", {})
    eager = train_classifier(tiny(), tiny(12), CLASSES, cfg, wbc_home / "eager")
    assert eager.speed["compiled"] is False
    for a, b in zip(compiled.history, eager.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
    state = torch.load(compiled.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k.startswith("_orig_mod.") for k in state)
    assert load_classifier(compiled.checkpoint) is not None


def test_gan_run_announces_compiling_and_records_the_fall_back(wbc_home, monkeypatch, compile_measured_faster,
                                                               broken_compiler):
    monkeypatch.setattr(wbc_compile, "c_compiler", lambda: "/usr/bin/g++")
    out = wbc_home / "gan"
    events: list[ProgressEvent] = []
    result = train_gan(tiny(), CLASSES, tiny_gan_config(), out, progress=events.append)
    assert events[0].message.endswith("; the first step compiles it") and events[0].message.startswith("compiled:")
    assert events[1].message == "compiled step failed (RuntimeError: C++ compile error: boom); continuing eager"
    assert json.loads((out / "gan_config.json").read_text())["speed"]["compiled"] is True  # the plan at the start
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["speed"]["compiled"] is False and ckpt["speed"]["notes"] == [events[1].message]
    assert ckpt["metrics"]["compiled"] == 0.0


# --- the user's own choice: compile auto / on / off in both configs ----------------------------------------------


@pytest.mark.parametrize("bad", ["yes", "", "ON", 1, None])
def test_configs_refuse_a_compile_choice_that_is_not_auto_on_or_off(bad):
    with pytest.raises(ValueError, match="compile must be"):
        ClassifierConfig(compile=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile must be"):
        GanConfig(compile=bad)  # type: ignore[arg-type]


def test_compile_choice_round_trips_through_the_saved_config():
    assert ClassifierConfig.from_dict(ClassifierConfig(compile="off").to_dict()).compile == "off"
    assert GanConfig.from_dict(GanConfig(compile="on").to_dict()).compile == "on"
    legacy = {k: v for k, v in ClassifierConfig().to_dict().items() if k != "compile"}  # saved before the knob
    assert ClassifierConfig.from_dict(legacy).compile == "auto"


def test_compile_off_keeps_a_classifier_eager_where_the_plan_would_compile(wbc_home, compile_measured_faster,
                                                                         broken_compiler, monkeypatch):
    """broken_compiler fails any compiled call: with compile="off" nothing is compiled, so nothing falls back."""
    monkeypatch.setattr(wbc_compile, "c_compiler", lambda: "/usr/bin/g++")
    events: list[ProgressEvent] = []
    auto = train_classifier(tiny(), tiny(12), CLASSES, classifier_config(), wbc_home / "auto")
    assert auto.speed["notes"], "the auto plan compiles here (and the broken compiler then falls back)"
    off = train_classifier(tiny(), tiny(12), CLASSES, classifier_config(compile="off"), wbc_home / "off",
                           progress=events.append)
    assert off.speed == {"compiled": False, "channels_last": False, "notes": [],
                         "reason": "eager: compiling was turned off"}
    assert not any("compiled step failed" in e.message for e in events)


def test_compile_on_compiles_a_gan_the_measurements_would_leave_eager(wbc_home, monkeypatch, broken_compiler):
    monkeypatch.setattr(wbc_compile, "c_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(wbc_compile, "MEASURED", {})  # nothing measured: "auto" stays eager
    train_gan(tiny(), CLASSES, tiny_gan_config(), wbc_home / "auto")
    assert json.loads((wbc_home / "auto" / "gan_config.json").read_text())["speed"]["compiled"] is False
    out = wbc_home / "on"
    result = train_gan(tiny(), CLASSES, tiny_gan_config(compile="on"), out)
    assert json.loads((out / "gan_config.json").read_text())["speed"]["reason"] == "compiled: asked for"
    speed = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["speed"]
    assert speed["notes"] and "compiled step failed" in speed["notes"][0]  # it did compile (and fell back)


def test_cli_saves_the_compile_choice_in_both_runs_configs(wbc_home, tmp_path, monkeypatch, capsys):
    from support import account

    from db import runs as runs_db
    from wbc_core import importing, jobs
    from wbc_core.cli.main import main

    folder = tmp_path / "cells"
    for c, colour in zip(CLASSES, [(200, 0, 0), (0, 200, 0), (0, 0, 200)], strict=True):
        (folder / c).mkdir(parents=True)
        for i in range(10):
            from PIL import Image

            Image.new("RGB", (32, 32), tuple(v + i for v in colour)).save(folder / c / f"{i}.png")
    importing.import_folder(folder, "tiny", size=32, user=account())
    monkeypatch.setattr(jobs, "launch", lambda run_id: None)
    assert main(["train", "--dataset", "tiny", "--epochs", "1", "--compile", "off", "--detach", "--json",
                 "--as", "admin"]) == 0
    assert runs_db.get_run(json.loads(capsys.readouterr().out)["run_id"]).config["compile"] == "off"
    assert main(["train-gan", "--dataset", "tiny", "--steps", "2", "--batch", "8", "--compile", "on", "--detach",
                 "--json", "--as", "admin"]) == 0
    assert runs_db.get_run(json.loads(capsys.readouterr().out)["run_id"]).config["compile"] == "on"
    assert main(["train", "--dataset", "tiny", "--compile", "maybe", "--as", "admin"]) != 0


# --- per CPU kind: a row for the ISA level first, and the layout it was measured in ------------------------------


def test_a_cpu_kinds_own_row_comes_first_and_brings_its_layout(monkeypatch):
    monkeypatch.setattr(wbc_compile, "c_compiler", lambda: "/usr/bin/g++")
    nhwc = replace(FAST, compiled_channels_last=True, source="the AVX512 row")
    monkeypatch.setattr(wbc_compile, "MEASURED", {("gan", "cpu", "fp32"): FAST,
                                                  ("gan", "cpu", "fp32", "AVX512"): nhwc})
    monkeypatch.setattr(wbc_compile, "cpu_kind", lambda: "AVX512")
    long = wbc_compile.plan("gan", "cpu", "fp32", 3000)
    assert long.compiled and long.channels_last and "the AVX512 row" in long.reason
    short = wbc_compile.plan("gan", "cpu", "fp32", 20)
    assert not short.compiled and not short.channels_last  # the row's eager layout is NCHW
    assert not wbc_compile.plan("gan", "cpu", "fp32", 3000, work_scale=0.0).channels_last  # another model
    assert wbc_compile.plan("gan", "cpu", "fp32", 1, request="on").channels_last
    monkeypatch.setattr(wbc_compile, "cpu_kind", lambda: "AVX2")  # no row of its own: the general one
    other = wbc_compile.plan("gan", "cpu", "fp32", 3000)
    assert other.compiled and not other.channels_last and other.reason.endswith("(test)")


def test_this_machine_has_a_cpu_kind():
    from wbc_core.precision import cpu_bf16_hardware

    isa = torch.backends.cpu.get_cpu_capability().upper()
    expected = f"{isa}-BF16" if isa.startswith("AVX512") and cpu_bf16_hardware() else isa
    assert isa and wbc_compile.cpu_kind() == expected


def test_a_cpu_with_bf16_units_is_its_own_kind(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr("wbc_core.precision.cpu_bf16_hardware", lambda: True)
    assert wbc_compile.cpu_kind() == "AVX512-BF16"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # capped: bf16 needs AVX-512
    assert wbc_compile.cpu_kind() == "AVX2"


def test_a_gan_run_trains_in_the_layout_its_row_measured_faster(wbc_home, monkeypatch):
    eager_nhwc = replace(FAST, eager_channels_last=True, warmup_s=1e9)  # never worth compiling: eager, NHWC
    monkeypatch.setattr(wbc_compile, "MEASURED", {("gan", "cpu", "fp32"): eager_nhwc})
    monkeypatch.setattr("wbc_core.gan.step.compile_plan",
                        lambda *a, **k: wbc_compile.plan(*a, **{**k, "work_scale": 1.0}))
    result = train_gan(tiny(), CLASSES, tiny_gan_config(), wbc_home / "nhwc")
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["speed"]["compiled"] is False and ckpt["speed"]["channels_last"] is True
    kernels = [t for t in ckpt["discriminator"].values() if t.ndim == 4 and t.shape[1] > 1 and t.shape[-1] > 1]
    assert kernels and all(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                           for t in kernels)
    monkeypatch.setattr(wbc_compile, "MEASURED", {})
    plain = train_gan(tiny(), CLASSES, tiny_gan_config(), wbc_home / "nchw")
    ckpt = torch.load(plain.last_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["speed"]["channels_last"] is False
    assert all(t.is_contiguous() for t in ckpt["discriminator"].values() if t.ndim == 4)
