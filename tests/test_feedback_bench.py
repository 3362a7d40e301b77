"""bench/feedback.py --quick end to end on the real PBC cells: the scripted reviewer, the acceptance model, steered
generation and the report (numbers at --quick budgets are noise-level; only their presence and ranges are checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PBC128 = Path(os.environ.get("WBC_PBC128", ROOT.parent / "shared" / "data" / "pbc128"))


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_feedback_bench_reports_every_number(tmp_path):
    if not PBC128.is_dir():
        pytest.fail(f"real-data folder {PBC128} is missing (set WBC_PBC128 or provide ../shared/data/pbc128)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WBC_PBC128": str(PBC128)}
    env.pop("WBC_HOME", None)
    env.pop("WBC_DB_URL", None)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "feedback.py"), "--quick", "--threads", "1",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "feedback_quick.json").read_text())
    assert results["partial"] is False
    assert results["review"]["decisions"] == 8 * results["config"]["per_class"]
    model = results["acceptance_model"]
    assert model["version"] == 1 and model["trained_on"] == results["review"]["decisions"]
    for arm in ("unsteered", "steered_radius", "steered_clusters", "steered_coverage"):
        overall = results["comparison"][arm]["overall"]
        assert overall["n"] == 8 * results["config"]["per_class"]
        assert 0.0 <= overall["hidden_acceptance"] <= 1.0 and overall["coverage"] is not None
        assert "basophil" in results["comparison"][arm]
    for guard, steering in results["steering_reports"].items():
        assert steering["factor"] == results["config"]["steer"] and "overall" in steering
        assert steering["guard"] == guard
    assert set(results["steering_reports"]) == {"radius", "clusters", "coverage"}
    for row in results["effort"]["per_class"].values():
        for order in ("oldest_first", "most_likely_accepted"):
            assert 0 <= row[order] <= results["config"]["effort_per_class"]
        assert row["quota"] == min(row["quota_asked"], row["accepted_available"])
    assert set(results["goals"]) >= {"acceptance_gain_points", "coverage_drop", "fewer_decisions"}
    assert results["goals"]["headline_arm"] == "steered_coverage"  # the product's default guard


def test_effort_leaves_out_classes_with_too_few_accepted_cells_to_say_anything():
    from bench.feedback import MIN_MEASURABLE_ACCEPTED, reviewer_effort

    ids = list(range(60))
    class_of = {i: "many" if i < 40 else "one" for i in ids}
    # "many": every other cell accepted, and the model ranks exactly those first; "one": a single accepted cell,
    # last in age order and ranked first, which alone would claim a 95% saving.
    verdicts = {i: (i % 2 == 0) if i < 40 else i == 59 for i in ids}
    p = {i: 0.9 if verdicts[i] else 0.1 for i in ids}
    out = reviewer_effort(ids, class_of, verdicts, p, quota=10)
    assert out["per_class"]["many"] == {"quota": 10, "quota_asked": 10, "accepted_available": 20,
                                        "measurable": True, "oldest_first": 19, "most_likely_accepted": 10}
    assert out["per_class"]["one"]["measurable"] is False and out["not_measurable"] == ["one"]
    assert out["total"] == {"oldest_first": 19, "most_likely_accepted": 10}  # "one" left out
    assert out["fewer_decisions"] == 1 - 10 / 19 and out["min_accepted"] == MIN_MEASURABLE_ACCEPTED
    none = reviewer_effort(ids[40:], {i: "one" for i in ids[40:]}, verdicts, p, quota=10)
    assert none["fewer_decisions"] is None
