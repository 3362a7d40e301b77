"""--budget-minutes (bench/loop_plan.fit_regime): each regime's GAN steps and arm images fit what is left."""

from __future__ import annotations

import math

import pytest

from bench import loop_plan as lp
from bench import product_loop as pl


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A class folder shaped like PBC's: two rare-to-be classes and a common one (files are only counted)."""
    root = tmp_path_factory.mktemp("cells")
    for name, n in {"basophil": 1200, "ig": 2800, "neutrophil": 3300}.items():
        (root / name).mkdir()
        for i in range(n):
            (root / name / f"{i}.jpg").touch()
    return root


def config(folder, *extra: str) -> pl.LoopConfig:
    return pl.parse_args(["--data", str(folder), *extra])


def even(pace: float) -> dict[str, float]:
    return dict.fromkeys(lp.PACE_KINDS, pace)


def test_a_run_that_fits_keeps_its_configured_steps_and_images(folder):
    cfg = config(folder, "--budget-minutes", "10000")
    fitted = lp.fit_regime(cfg, 0, 3000, elapsed_s=600, paces=even(1.0))
    assert fitted.scale == 1.0 and fitted.gan_steps == cfg.gan_steps
    assert fitted.arm_images == lp.arm_budget(cfg, 3000) and "as configured" in fitted.note


def test_a_slow_machine_gets_fewer_steps_and_images_by_one_factor_and_the_rest_fits(folder):
    cfg = config(folder, "--budget-minutes", "120")
    elapsed = 12 * 60
    full = lp.fit_regime(cfg, 0, 3000, elapsed, even(1.0))
    slow = lp.fit_regime(cfg, 0, 3000, elapsed, even(1.8))
    assert lp.MIN_SCALE < slow.scale < full.scale <= 1.0
    assert slow.gan_steps == round(cfg.gan_steps * slow.scale)
    assert slow.arm_images == round(lp.arm_budget(cfg, 3000) * slow.scale)
    # The remaining regimes at this scale and pace land on the budget's aim, not beyond it.
    assert elapsed / 60 + slow.planned_minutes == pytest.approx(120 * lp.BUDGET_SAFETY, abs=0.2)
    assert slow.minutes_left == 108.0 and slow.pace == even(1.8)
    assert slow.plan_seconds == pytest.approx(slow.planned_minutes * 60 / 1.8, rel=1e-3)  # what the bar counts


def test_each_kind_of_stage_is_fitted_at_its_own_pace(folder):
    cfg = config(folder, "--budget-minutes", "120")
    slow_gan = lp.fit_regime(cfg, 0, 3000, 600, {"gan": 3.0, "arm": 1.0, "review": 1.0})
    slow_arms = lp.fit_regime(cfg, 0, 3000, 600, {"gan": 1.0, "arm": 3.0, "review": 1.0})
    # The arms are most of the plan, so slow arms cost the run more than a slow GAN does.
    assert slow_arms.scale < slow_gan.scale < 1.0
    # A kind not measured yet is assumed as slow as the slowest one measured.
    assert lp.usable_paces({"arm": 1.7}) == {"gan": 1.7, "arm": 1.7, "review": 1.7}


def test_later_regimes_count_only_themselves(folder):
    cfg = config(folder, "--budget-minutes", "120")
    first = lp.fit_regime(cfg, 0, 3000, 30 * 60, even(1.5))
    last = lp.fit_regime(cfg, len(cfg.regimes) - 1, 3000, 30 * 60, even(1.5))
    assert last.scale > first.scale  # the same time left, for one regime instead of three


def test_a_budget_that_cannot_fit_stops_at_the_floor_and_says_it_will_overrun(folder):
    cfg = config(folder, "--budget-minutes", "30")
    fitted = lp.fit_regime(cfg, 0, 3000, elapsed_s=40 * 60, paces=even(2.0))
    assert fitted.scale == lp.MIN_SCALE and fitted.gan_steps == round(cfg.gan_steps * lp.MIN_SCALE)
    assert "overrun" in fitted.note and fitted.minutes_left < 0


@pytest.mark.parametrize("pace", [math.nan, 0.0, -1.0, math.inf, None])
def test_a_meaningless_pace_counts_as_not_measured(folder, pace):
    cfg = config(folder, "--budget-minutes", "120")
    assert lp.fit_regime(cfg, 0, 3000, 600, even(pace)) == lp.fit_regime(cfg, 0, 3000, 600, {})
    assert lp.fit_regime(cfg, 0, 3000, 600, {}) == lp.fit_regime(cfg, 0, 3000, 600, even(1.0))
    assert lp.fit_regime(cfg, 0, 3000, 600, {"gan": pace, "arm": 2.0}).pace == even(2.0)


def test_the_loop_fits_each_regime_at_its_measured_pace_and_plans_its_stages_with_it(folder, tmp_path):
    cfg = config(folder, "--budget-minutes", "60", "--out", str(tmp_path))  # every stage writes the results
    loop = pl.ProductLoop(cfg)
    # Before any arm, the reference stands in for the arms: 10,000 images in 200 s is half the arms' planned speed.
    loop.reference_images = 10_000
    loop.stage("reference", 2 * lp.arm_seconds(cfg, 10_000))
    assert loop.paces() == {"arm": pytest.approx(2.0)}
    fitted = loop.fit_budget(0, 3000)
    assert fitted.pace == even(2.0) and fitted.scale < 1.0
    # Later stages are counted at the fitted sizes, so the pace of the next fit compares like with like.
    assert loop.stage_plan["gan"] == pytest.approx(fitted.gan_steps * lp.SPEED["gan_step_s"])
    assert loop.stage_plan["arm"] == pytest.approx(lp.arm_seconds(cfg, fitted.arm_images))
    loop.stage("rare: GAN", 1.5 * loop.stage_plan["gan"])  # measured kinds then speak for themselves
    loop.stage("rare: real seed 0", 3.0 * loop.stage_plan["arm"])
    assert loop.paces() == {"gan": pytest.approx(1.5), "arm": pytest.approx(3.0)}


def test_the_default_run_is_budgeted_and_quick_is_not():
    assert pl.parse_args([]).budget_minutes == 120 and pl.parse_args(["--quick"]).budget_minutes == 0
    assert pl.parse_args(["--budget-minutes", "0"]).budget_minutes == 0


def test_a_resumed_run_fits_at_the_stopped_sessions_pace_until_it_measures_its_own(folder, tmp_path):
    """Every stage writes its pace per kind into the results; a resumed run's first fit uses them (without, it fitted
    at the plan's speed, 1x, on a machine measured 3x slower) and its own measurements replace them kind by kind."""
    cfg = config(folder, "--budget-minutes", "60", "--out", str(tmp_path), "--tag", "r")
    first = pl.ProductLoop(cfg)
    first.stage("rare: GAN", 3.0 * first.stage_plan["gan"])
    first.stage("rare: real seed 0", 2.0 * first.stage_plan["arm"])
    assert first.results["paces"] == {"gan": pytest.approx(3.0), "arm": pytest.approx(2.0)}
    resumed = pl.ProductLoop(config(folder, "--budget-minutes", "60", "--out", str(tmp_path), "--tag", "r",
                                    "--resume"))
    assert resumed.paces() == {"gan": pytest.approx(3.0), "arm": pytest.approx(2.0)}
    assert resumed.fit_budget(0, 3000).pace == {"gan": pytest.approx(3.0), "arm": pytest.approx(2.0),
                                                "review": pytest.approx(3.0)}
    resumed.stage("rare: GAN", 1.5 * resumed.stage_plan["gan"])
    assert resumed.paces() == {"gan": pytest.approx(1.5), "arm": pytest.approx(2.0)}
