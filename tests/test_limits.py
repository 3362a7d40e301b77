"""wbc_core.limits: one bound per numeric option, enforced by the configs and the domain, and memory estimates that
refuse a job before it starts; wbc_core.options: one function per config; configs importable without torch.

Memory calibration (how the constants in wbc_core/limits.py were measured, 2-core EPYC VM, fp32, 1 thread): peak RSS
of two real GAN steps (wbc_core.gan.step.compute_limit_sec_per_step) and two ResNet-18 / small-CNN AdamW steps,
in fresh processes. Measured / estimated totals (MB): GAN 32 px w16 b32 879/821, 64 px w64 b64 1227/1130,
64 px w64 b256 2060/1968, 128 px w32 b64 1557/1378, 128 px w64 b128 3072/2840; ResNet-18 64 px b32 1120/1052,
b128 1341/1296, 128 px b64 1721/1621; small CNN 64 px b256 1589/1458. The estimate stays a little below the
measurement on purpose: a job is refused only when even that cannot fit.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from support import fresh_python

from wbc_core import limits, options
from wbc_core.classifier.config import _BOUNDED as CLASSIFIER_BOUNDED
from wbc_core.classifier.config import ClassifierConfig
from wbc_core.gan.config import _BOUNDED as GAN_BOUNDED
from wbc_core.gan.config import GanConfig

GIB = 1024**3
NOT_NUMBERS = [float("nan"), float("inf"), float("-inf"), True, None, "5", [5], 10**400]


# -- the limits themselves --------------------------------------------------------------------------------------


def test_every_limit_is_well_formed():
    assert len(limits.LIMITS) >= 30
    for name, limit in limits.LIMITS.items():
        assert limit.name == name and limit.label and limit.min < limit.max, name
        if limit.integer:
            assert float(limit.min).is_integer() and float(limit.max).is_integer(), name
        assert limit.widget_min <= limit.widget_max, name
        assert limit.problem(limit.widget_min) is None and limit.problem(limit.widget_max) is None, name


@pytest.mark.parametrize("name", sorted(limits.LIMITS))
def test_every_limit_refuses_non_numbers_and_out_of_range_in_plain_words(name):
    limit = limits.bound(name)
    for bad in NOT_NUMBERS:
        with pytest.raises(ValueError, match=f"^{re.escape(limit.label)} must be "):
            limits.check(name, bad)
    step = 1 if limit.integer else 1e-9
    for bad in (limit.min - step, limit.max + step, limit.max * 10**6 + 1):
        with pytest.raises(ValueError, match="must be"):
            limits.check(name, bad)
    if limit.min_open:
        with pytest.raises(ValueError):
            limits.check(name, limit.min)
    else:
        assert limits.check(name, limit.min) == limit.min
    if limit.max_open:
        with pytest.raises(ValueError):
            limits.check(name, limit.max)
    else:
        assert limits.check(name, limit.max) == limit.max


def test_check_returns_ints_for_whole_number_limits_and_refuses_fractions():
    assert limits.check("gan_steps", 3000.0) == 3000 and isinstance(limits.check("gan_steps", 3000.0), int)
    with pytest.raises(ValueError, match="GAN training steps must be a whole number from 1 to 1,000,000, got 2.5"):
        limits.check("gan_steps", 2.5)
    assert isinstance(limits.check("synthetic_cap", 2), float)
    # Exact for huge ints: 10**23 must not pass by rounding through a float.
    with pytest.raises(ValueError, match="got 100,000,000,000,000,000,000,000"):
        limits.check("gan_steps", 10**23)
    with pytest.raises(ValueError, match="candidates per class must be a whole number from 1 to 5,000, "
                                         "got 99,999,999,999"):
        limits.check("candidates_per_class", 99_999_999_999)
    with pytest.raises(KeyError, match="no limit 'nope'"):
        limits.check("nope", 1)


def test_clamp_reads_stored_values_into_range():
    assert limits.clamp("quota", 10**20) == 1_000_000
    assert limits.clamp("quota", 10**400) == 1_000_000
    assert limits.clamp("quota", 2_000_000.0) == 1_000_000
    assert limits.clamp("quota", -5) == 0
    assert limits.clamp("quota", "7") == 7
    for junk in (float("nan"), None, "many", True, [3]):
        assert limits.clamp("quota", junk) is None
    assert limits.clamp("consensus_votes", 50) == 20


def test_constants_elsewhere_agree_with_the_limits():
    from wbc_core import embedding, review_model, thumbnails
    from wbc_core.classifier.config import AUGMENT_PRESETS
    from wbc_core.classifier.presets import PRESETS

    assert tuple(PRESETS) == AUGMENT_PRESETS
    assert limits.bound("blind_fraction").max == review_model.MAX_BLIND_FRACTION
    assert limits.bound("thumbnail_size").max == thumbnails.MAX_SIZE
    assert limits.bound("embedding_points").max == embedding.MAX_POINTS
    assert GanConfig().quality_per_class <= limits.bound("quality_cells_per_class").max


# -- the configs enforce them -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "limit_name"), GAN_BOUNDED)
def test_gan_config_refuses_every_bounded_field_out_of_range(field, limit_name):
    limit = limits.bound(limit_name)
    for bad in (float("nan"), float("inf"), limit.max * 1000 + 1, limit.min - 1):
        with pytest.raises(ValueError, match=f"{field} must be "):
            GanConfig(**{field: bad})


@pytest.mark.parametrize(("field", "limit_name"), CLASSIFIER_BOUNDED)
def test_classifier_config_refuses_every_bounded_field_out_of_range(field, limit_name):
    limit = limits.bound(limit_name)
    bad_values = [limit.max * 1000 + 1, limit.min - 1]
    if not limit.integer:
        bad_values += [float("nan"), float("inf")]
    for bad in bad_values:
        with pytest.raises(ValueError, match=field):
            ClassifierConfig(**{field: bad})


def test_configs_and_options_import_without_torch():
    code = ("import sys, wbc_core.gan.config, wbc_core.classifier.config, wbc_core.options as o, wbc_core.limits\n"
            "from wbc_core.gan import GanConfig\nfrom wbc_core.classifier import ClassifierConfig\n"
            "GanConfig(); ClassifierConfig(); ClassifierConfig(model='small_cnn').to_dict()\n"
            "o.gan_config(64, 'cuda', {'width': 16}); o.classifier_config(32, {'epochs': 2}); o.suggested_preset()\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    assert json.loads(fresh_python(code, timeout=120).replace("'", '"')) == []


def test_a_small_cnn_is_built_without_importing_torchvision():
    # A small_cnn process needs no torchvision (its import is about 0.25 s of such a job's start).
    code = ("import sys\nfrom wbc_core.classifier import build_model\nbuild_model('small_cnn', 3, 32)\n"
            "print('torchvision' in sys.modules)")
    assert fresh_python(code, timeout=120) == "False"


@pytest.mark.parametrize("package", ["wbc_core.gan", "wbc_core.classifier"])
def test_lazy_packages_export_the_same_names(package):
    import importlib

    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(module._WHERE)
    for name in module.__all__:
        assert getattr(module, name) is not None
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        module.nope  # noqa: B018


# -- options: one function per config ----------------------------------------------------------------------------


def test_gan_config_from_options():
    assert options.gan_config(64) == GanConfig(image_size=64)
    assert options.gan_config(64, "cpu", {}) == GanConfig(image_size=64)
    c = options.gan_config(32, None, {"width": 16, "steps": None, "d_width": 24})
    assert (c.image_size, c.g_width, c.d_width, c.steps) == (32, 16, 24, GanConfig().steps)
    cuda = options.gan_config(64, "cuda", {"steps": 10})
    assert (cuda.image_size, cuda.g_width, cuda.steps, cuda.device) == (64, 128, 10, "cuda")
    assert options.gan_config(128, "cuda").image_size == 128
    with pytest.raises(ValueError, match="unknown GanConfig options: bogus, widht"):
        options.gan_config(64, None, {"widht": 8, "bogus": 1})
    with pytest.raises(ValueError, match="unknown GAN preset 'tpu'"):
        options.gan_config(64, "tpu", {})
    with pytest.raises(ValueError, match="steps must be a whole number"):
        options.gan_config(64, None, {"steps": 10**23})


def test_classifier_config_from_options():
    assert options.classifier_config(64) == ClassifierConfig(image_size=64)
    c = options.classifier_config(32, {"epochs": 2, "model": "small_cnn", "seed": None})
    assert (c.image_size, c.epochs, c.model, c.seed) == (32, 2, "small_cnn", 0)
    with pytest.raises(ValueError, match="unknown ClassifierConfig option: learning_rate"):
        options.classifier_config(32, {"learning_rate": 0.1})


def test_gan_runs_preset_values_delegate_to_options():
    from wbc_core import gan_runs

    assert gan_runs.preset_values("cuda", 64) == options.preset_values("cuda", 64)
    assert gan_runs.GAN_PRESETS is options.GAN_PRESETS


# -- memory ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "width"), [(32, 8), (64, 64), (128, 128)])
def test_gan_parameter_estimate_matches_the_real_networks(size, width):
    from wbc_core.gan import build_networks, count_params

    g, d = build_networks(GanConfig(image_size=size, g_width=width, d_width=width, aux_weight=0.0), num_classes=8)
    real = count_params(g) + count_params(d)
    assert limits.gan_parameter_count(size, width, width) == pytest.approx(real, rel=0.1)


def test_memory_estimates_grow_with_batch_size_and_width():
    small = limits.gan_memory_bytes(64, 64, 64, 64)
    assert limits.gan_memory_bytes(256, 64, 64, 64) > 3 * (small - limits.RUNTIME_BYTES)
    assert limits.gan_memory_bytes(64, 128, 64, 64) > small and limits.gan_memory_bytes(64, 64, 128, 128) > small
    # The run: batch 100,000 at 64 px needs hundreds of GiB, far beyond any workstation.
    assert limits.gan_memory_bytes(100_000, 64, 64, 64, train_cells=168) > 100 * GIB
    assert limits.gan_memory_bytes(64, 64, 64, 64) < 2 * GIB  # while the default fits anywhere
    assert limits.classifier_memory_bytes("resnet18", 128, 64) < 2 * GIB
    # A batch above the train cells is what the trainer takes anyway: every cell in one batch.
    assert limits.classifier_memory_bytes("resnet18", 4096, 64, train_cells=24) == \
        limits.classifier_memory_bytes("resnet18", 24, 64, train_cells=24)


def test_available_memory_is_read_from_the_machine():
    have = limits.available_memory_bytes()
    assert have is not None and 64 * 1024**2 < have < 64 * 1024**4


def test_gan_job_refuses_a_batch_above_the_train_cells_and_one_that_cannot_fit():
    with pytest.raises(ValueError, match="a batch of 512 cells is larger than the 168 train cells"):
        limits.check_gan_job(GanConfig(batch_size=512, device="cpu"), 168)
    big = GanConfig(batch_size=1024, image_size=128, g_width=1024, d_width=1024, device="cpu")
    with pytest.raises(ValueError, match=r"needs about [\d.]+ GiB of memory, but this machine has 4.0 GiB available"):
        limits.check_gan_job(big, 5000, available=4 * GIB)
    limits.check_gan_job(GanConfig(device="cpu"), 5000, available=4 * GIB)  # the default fits in 4 GiB


def test_classifier_job_refuses_what_cannot_fit_but_not_a_batch_above_the_cells():
    cfg = ClassifierConfig(batch_size=4096, image_size=256, device="cpu")
    with pytest.raises(ValueError, match="a resnet18 batch of 4,096 at 256 px needs about"):
        limits.check_classifier_job(cfg, 100_000, available=8 * GIB)
    limits.check_classifier_job(cfg, 24, available=8 * GIB)  # 24 cells: one batch of 24
    limits.check_classifier_job(ClassifierConfig(device="cpu"), 10_000, available=4 * GIB)


def test_memory_check_uses_gpu_memory_for_gpu_runs(monkeypatch):
    monkeypatch.setattr(limits, "_runs_on_gpu", lambda device: True)
    monkeypatch.setattr(limits, "_gpu_memory_bytes", lambda device: 2 * GIB)
    with pytest.raises(ValueError, match="but the GPU has 2.0 GiB available"):
        limits.check_gan_job(GanConfig(batch_size=512, device="cuda"), 5000)
    limits.check_gan_job(GanConfig(batch_size=64, device="cuda"), 5000)
    monkeypatch.setattr(limits, "_gpu_memory_bytes", lambda device: None)  # unknown: not refused
    limits.check_gan_job(GanConfig(batch_size=1024, g_width=1024, d_width=1024, device="cuda"), 5000)


def test_rule_wording():
    assert limits.bound("gan_lr").rule() == "a number above 0 and below 1"
    assert limits.bound("blind_fraction").rule() == "a number above 0 and at most 0.5"
    assert limits.bound("gan_ema_decay").rule() == "a number at least 0 and below 1"
    assert limits.bound("quota").rule() == "a whole number from 0 to 1,000,000"
    assert not math.isnan(limits.bound("gan_lr").widget_min)


def test_widget_bounds_have_one_type_per_limit():
    """Streamlit refuses a number_input whose min, max and value differ in type (int vs float)."""
    for limit in limits.LIMITS.values():
        kind = int if limit.integer else float
        assert type(limit.widget_min) is kind and type(limit.widget_max) is kind, limit.name
        assert type(limit.check(limit.widget_max)) is kind and type(limit.clamp(limit.widget_max)) is kind, limit.name
