"""The acceptance model: experts' consensus decisions predict whether a person would accept a candidate.

Training data (`training_examples`): the dataset's consensus outcomes so far, one example per
(candidate, class it is offered as), label 1 = accepted as that class, 0 = not:
- accepted as its intended class: (intended, 1);
- rejected: (intended, 0);
- relabelled (accepted as another class): (intended, 0) AND (new class, 1): the cell is a bad example of what the
  GAN meant and a good one of the class the reviewers gave it. Both examples share the image, so cross-validation
  keeps them in the same fold (StratifiedGroupKFold, groups = image id).
Pending and disputed candidates teach nothing. Hidden real cells of the blinded realism test never enter: only
synthetic candidates are read, and blind items are dropped by id as a second guard.

Features (`FEATURES`): the judge's penultimate features of the cell, the judge's probability of the class it is
offered as, its distance to the nearest real train cell in judge features, a one-hot of that class, and the judge's
features again in that class's own block (one block per class, zero in the others). Model:
StandardScaler + L2 logistic regression (scikit-learn Pipeline). It reports a cross-validated AUC (k = up to 5 folds,
fewer when a verdict has fewer examples) and a calibration curve (sklearn.calibration.calibration_curve on the
out-of-fold predictions), both saved with the model.

The model is advisory only: it orders the review queue and steers generation; nothing here records a decision.
It trains as a "feedback" job, which also scores the dataset's undecided candidates (db.acceptance).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from db import acceptance as acc_db
from db import datasets as ds_db
from db import decisions as decisions_db
from db import runs as runs_db
from db.vocabulary import ACTIVE_STATUSES
from wbc_core import jobs
from wbc_core.auth import User, authorize
from wbc_core.context import current
from wbc_core.types import ProgressEvent

if TYPE_CHECKING:
    import numpy as np
    import torch

    from wbc_core.quality.judge import Reference

FORMAT = "wbc-acceptance-model/1"
FEATURES = ("judge_features", "judge_prob", "nearest_real_distance", "class_one_hot", "class_judge_features")
# Why the per-class block: with the class only as an offset, the model is one direction in judge features shared by
# every class, and steering along it (bench/feedback.py, session 6) pulled every class towards the look of the most
# accepted one. With a block per class, each class has its own direction on top of the shared one (the L2 penalty
# keeps a class's own part small until its decisions say otherwise). Models saved before it keep their feature
# order in feature_spec and are read with it (`feature_order`).
V1_FEATURES = FEATURES[:4]
MIN_PER_LABEL = 3  # accepted and not-accepted examples each needed to fit a model
# Before the first model, the check for both verdicts reads at most this many of the newest decision rows.
RETRAIN_COUNT_WINDOW = 5_000
MAX_FOLDS = 5
DEFAULT_RETRAIN_EVERY = 50  # new decisions between automatic retrains (review setting "retrain_every")
SCORE_CHUNK = 2000  # candidates decoded and scored at a time (bounds memory)
PERMISSION = "train"  # starting a retrain by hand; the automatic one runs for any reviewer's decisions


class FeedbackError(ValueError):
    """The acceptance model cannot be trained or used as asked (too few decisions, no model yet)."""


@dataclass(frozen=True)
class Example:
    """One training example: a candidate offered as a class, and whether the reviewers accepted it as that."""

    image_id: int
    class_name: str
    label: int  # 1 accepted as class_name, 0 not


def training_examples(dataset_id: int) -> list[Example]:
    """The examples the next model learns from (see the module docstring for the encoding)."""
    from wbc_core.review_model import consensus

    outcomes = consensus(dataset_id)
    blind = {b["image_id"] for b in decisions_db.blind_items(dataset_id)}
    rows = {r.id: r for r in ds_db.images_by_ids(sorted(outcomes))}
    out: list[Example] = []
    for image_id, outcome in sorted(outcomes.items()):
        row = rows.get(image_id)
        if row is None or row.origin != "synthetic" or image_id in blind:
            continue
        if outcome.status == "rejected":
            out.append(Example(image_id, row.class_name, 0))
        elif outcome.status == "accepted":
            if outcome.final_class == row.class_name:
                out.append(Example(image_id, row.class_name, 1))
            else:
                out += [Example(image_id, row.class_name, 0), Example(image_id, str(outcome.final_class), 1)]
    return out


# -- features ------------------------------------------------------------------------------------------------

def cell_features(ref: Reference, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(judge features [N,D], judge class probabilities [N,K], nearest real train distance [N]) of uint8 cells."""
    import torch

    from wbc_core.quality.evaluate import score_cells
    from wbc_core.quality.judge import probs_from_features

    scores = score_cells(ref, images, torch.zeros(images.shape[0], dtype=torch.int64))
    return scores.features, probs_from_features(ref.judge, scores.features), scores.nearest_distance


def feature_order(blob: dict[str, Any]) -> tuple[str, ...]:
    """The feature blocks a saved model was fitted on (models without a recorded order use today's FEATURES)."""
    order = tuple(blob.get("feature_spec", {}).get("order") or FEATURES)
    if order not in (FEATURES, V1_FEATURES):
        raise FeedbackError(f"the acceptance model uses features {list(order)} that this version of the app does not "
                            "compute; train the acceptance model again")
    return order


def input_width(order: tuple[str, ...], judge_dim: int, n_classes: int) -> int:
    """Columns of a design matrix with these feature blocks."""
    return judge_dim + 2 + n_classes + (n_classes * judge_dim if "class_judge_features" in order else 0)


def design_matrix(feats: torch.Tensor, probs: torch.Tensor, nearest: torch.Tensor, class_index: list[int],
                  n_classes: int, order: tuple[str, ...] = FEATURES) -> np.ndarray:
    """The model's input rows (the blocks of `order`, in order) for cells offered as the given class indices."""
    import numpy as np

    idx = np.asarray(class_index, dtype=np.int64)
    f = feats.detach().float().numpy()
    p = probs.detach().float().numpy()[np.arange(len(idx)), idx]
    one_hot = np.eye(n_classes, dtype=np.float32)[idx] if len(idx) else np.zeros((0, n_classes), np.float32)
    blocks = [f, p[:, None], nearest.detach().float().numpy()[:, None], one_hot]
    if "class_judge_features" in order:  # row i: f_i in block idx_i, zeros elsewhere
        blocks.append((one_hot[:, :, None] * f[:, None, :]).reshape(len(idx), n_classes * f.shape[1]))
    return np.hstack(blocks).astype(np.float64)


def _decode(dataset_id: int, image_ids: list[int], size: int) -> torch.Tensor:
    from wbc_core.store import decode_many

    rows = ds_db.images_by_ids(image_ids)
    if len(rows) != len(image_ids):
        raise FeedbackError(f"{len(image_ids) - len(rows)} candidates of dataset {dataset_id} are gone")
    return decode_many([current().absolute(r.path) for r in rows], size)


# -- training ------------------------------------------------------------------------------------------------

def _pipeline():  # noqa: ANN202
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # Strong L2 (C=0.1): a few hundred examples against ~100 judge features would overfit otherwise.
    return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(C=0.1, max_iter=2000))])


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Out-of-fold AUC and calibration curve: {"cv_auc", "k_folds", "calibration": {...}} (AUC None if too few)."""
    import numpy as np
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    k = int(min(MAX_FOLDS, np.bincount(y, minlength=2).min(), len(np.unique(groups))))
    if k < 2:
        return {"cv_auc": None, "k_folds": 0, "calibration": {}}
    oof = np.full(len(y), np.nan)
    for train, test in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=0).split(x, y, groups):
        if len(np.unique(y[train])) < 2:
            continue
        oof[test] = _pipeline().fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    seen = ~np.isnan(oof)
    if len(np.unique(y[seen])) < 2:
        return {"cv_auc": None, "k_folds": k, "calibration": {}}
    bins = int(min(10, max(2, seen.sum() // 20)))
    observed, predicted = calibration_curve(y[seen], oof[seen], n_bins=bins, strategy="quantile")
    return {"cv_auc": float(roc_auc_score(y[seen], oof[seen])), "k_folds": k,
            "calibration": {"predicted": [float(v) for v in predicted], "observed": [float(v) for v in observed],
                            "bins": bins, "n": int(seen.sum()),
                            "brier": float(brier_score_loss(y[seen], oof[seen]))}}


def train_model(dataset_id: int, run_id: int | None = None, progress=None,  # noqa: ANN001
                should_stop=None) -> dict[str, Any]:  # noqa: ANN001
    """Train the dataset's next acceptance model on its consensus decisions, then score its undecided candidates."""
    import joblib
    import numpy as np

    from wbc_core.gan_runs import quality_reference
    from wbc_core.provenance import JudgeKey
    from wbc_core.quality.judge import app_quality_config

    def say(step: int, message: str) -> None:
        if progress is not None:
            progress(ProgressEvent(step=step, total=4, message=message))

    info = ds_db.get_dataset(dataset_id)
    last_id = acc_db.last_decision_id()  # read first: decisions recorded while it trains count towards the next one
    examples = training_examples(info.id)
    labels = Counter(e.label for e in examples)
    if labels[1] < MIN_PER_LABEL or labels[0] < MIN_PER_LABEL:
        raise FeedbackError(f"the acceptance model needs at least {MIN_PER_LABEL} accepted and {MIN_PER_LABEL} "
                            f"rejected candidates by consensus; dataset {info.name!r} has {labels[1]} and "
                            f"{labels[0]}: review more candidates first")
    size = int(info.image_size)
    say(0, "loading the judge")
    ref = quality_reference(info.id, size)
    image_ids = sorted({e.image_id for e in examples})
    say(1, f"judge features of {len(image_ids)} decided candidates")
    feats, probs, nearest = cell_features(ref, _decode(info.id, image_ids, size))
    row_of = {image_id: i for i, image_id in enumerate(image_ids)}
    rows = [row_of[e.image_id] for e in examples]
    cls = {c: i for i, c in enumerate(info.class_names)}
    x = design_matrix(feats[rows], probs[rows], nearest[rows], [cls[e.class_name] for e in examples], len(cls))
    y = np.array([e.label for e in examples], dtype=np.int64)
    say(2, f"fitting on {len(y)} examples")
    cv = cross_validate(x, y, np.array([e.image_id for e in examples]))
    pipeline = _pipeline().fit(x, y)
    version = acc_db.next_version(info.id)
    key = JudgeKey(info.id, size, info.split_hash, app_quality_config().key())
    folder = (jobs.run_dir(run_id) if run_id is not None else current().paths.cache / "acceptance"
              / f"dataset_{info.id}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"acceptance_v{version:04d}.joblib"
    per_class = {c: dict(Counter(e.label for e in examples if e.class_name == c)) for c in info.class_names}
    summary = {"examples": len(y), "accepted": int(labels[1]), "not_accepted": int(labels[0]),
               "per_class": {c: {"accepted": v.get(1, 0), "not_accepted": v.get(0, 0)} for c, v in per_class.items()},
               "features": list(FEATURES), "feature_dim": int(x.shape[1]), "k_folds": cv["k_folds"],
               "decision_max_id": last_id, "image_size": size}
    blob = {"format": FORMAT, "pipeline": pipeline, "class_names": list(info.class_names), "version": version,
            "dataset_id": info.id, "trained_on": len(image_ids), "judge_key": key.folder_name, "image_size": size,
            "feature_spec": {"order": list(FEATURES), "judge_features": int(feats.shape[1]),
                             "class_one_hot": list(info.class_names)},
            "cv_auc": cv["cv_auc"], "calibration": cv["calibration"]}
    joblib.dump(blob, path)
    model = acc_db.add_model(info.id, trained_on=len(image_ids), cv_auc=cv["cv_auc"], calibration=cv["calibration"],
                             summary=summary, path=current().relative(path), run_id=run_id, version=version)
    say(3, "scoring undecided candidates")
    scored = score_pending(info.id, model, blob=blob, ref=ref, should_stop=should_stop)
    return {"model_id": model["id"], "version": version, "trained_on": len(image_ids), "examples": len(y),
            "cv_auc": cv["cv_auc"], "k_folds": cv["k_folds"], "scored": scored}


# -- using a model -------------------------------------------------------------------------------------------

def load_model(model: dict[str, Any]) -> dict[str, Any]:
    """The saved model of a model row (kept in this process's caches)."""
    import joblib

    path = current().absolute(model["path"])
    cache = current().caches.get("acceptance.models", dict)
    if path not in cache:
        if not path.is_file():
            raise FeedbackError(f"the acceptance model file {path} is missing; train the model again")
        blob = joblib.load(path)
        if blob.get("format") != FORMAT:
            raise FeedbackError(f"{path} is not an acceptance model of this version of the app; train again")
        cache[path] = blob
    return cache[path]


def predict(blob: dict[str, Any], ref: Reference, images: torch.Tensor, class_names: list[str]) -> np.ndarray:
    """p_accept [N] of cells offered as the given classes."""
    import numpy as np

    if images.shape[0] == 0:
        return np.zeros(0)
    feats, probs, nearest = cell_features(ref, images)
    cls = {c: i for i, c in enumerate(blob["class_names"])}
    x = design_matrix(feats, probs, nearest, [cls[c] for c in class_names], len(cls), feature_order(blob))
    return blob["pipeline"].predict_proba(x)[:, 1]


def score_pending(dataset_id: int, model: dict[str, Any], blob: dict[str, Any] | None = None,
                  ref: Reference | None = None, should_stop=None) -> int:  # noqa: ANN001
    """Store the model's p_accept of every candidate without a consensus verdict; return how many."""
    from wbc_core.gan_runs import quality_reference
    from wbc_core.review_model import consensus

    blob = blob or load_model(model)
    ref = ref or quality_reference(dataset_id, int(blob["image_size"]))
    final = {i for i, o in consensus(dataset_id).items() if o.status in ("accepted", "rejected")}
    rows = [r for r in ds_db.candidates(dataset_id) if r.id not in final]
    done = 0
    for start in range(0, len(rows), SCORE_CHUNK):
        if should_stop is not None and should_stop():
            break
        chunk = rows[start:start + SCORE_CHUNK]
        images = _decode(dataset_id, [r.id for r in chunk], int(blob["image_size"]))
        p = predict(blob, ref, images, [r.class_name for r in chunk])
        done += acc_db.set_scores(model["id"], {r.id: float(v) for r, v in zip(chunk, p, strict=True)})
    return done


# -- jobs and the automatic retrain ----------------------------------------------------------------------------

def active_job(dataset_id: int) -> runs_db.RunInfo | None:
    """The dataset's queued or running feedback job, if any."""
    for status in ACTIVE_STATUSES:
        found = runs_db.list_runs(dataset_id=dataset_id, kind="feedback", status=status, limit=1)
        if found:
            return found[0]
    return None


def start_training(dataset: str | int, *, user: User, launch: bool = True) -> int:
    """Queue a job that trains the dataset's next acceptance model and scores its candidates; return the run id."""
    who = authorize(user, PERMISSION).username
    info = ds_db.get_dataset(dataset)
    running = active_job(info.id)
    if running is not None:
        return running.id  # one at a time: the running one already learns from every decision so far
    return jobs.submit("feedback", info.id, {"reason": "asked"}, started_by=who, launch=launch)


def _last_seen(dataset_id: int) -> int:
    """The newest decision id that a model was trained on or a retrain was queued at (0 before either)."""
    model = acc_db.latest_model(dataset_id)
    seen = int((model or {}).get("summary", {}).get("decision_max_id", 0))
    for run in runs_db.list_runs(dataset_id=dataset_id, kind="feedback", limit=1):
        seen = max(seen, int(run.config.get("decision_max_id", 0)))
    return seen


def retrain_due(dataset_id: int, every: int) -> bool:
    """The cheap check after decisions: N new decision rows since the last model (or the last queued retrain),
    enough of each verdict, the judge has scored candidates already (a decision must never set off judge training),
    and no job running.

    Runs after every decision, so its cost must not grow with the dataset: the count stops at N rows, the verdict
    check reads a bounded window, and a queued retrain (even one that fails) moves the mark, so a failing retrain is
    not queued again on every key press but N decisions later.
    """
    if every <= 0:
        return False
    if acc_db.decisions_since(dataset_id, after_id=_last_seen(dataset_id), limit=every) < every:
        return False
    model = acc_db.latest_model(dataset_id)
    if model is None:  # the first model needs both verdicts; later ones had them already
        counts = acc_db.decision_counts(dataset_id, after_id=0, limit=RETRAIN_COUNT_WINDOW)
        accepted = counts.get("accept", 0) + counts.get("relabel", 0)
        if counts.get("reject", 0) < MIN_PER_LABEL or accepted < MIN_PER_LABEL:
            return False
    return acc_db.has_judge_scores(dataset_id) and active_job(dataset_id) is None


def maybe_retrain(dataset_id: int, every: int, started_by: str, launch: bool = True) -> int | None:
    """Enqueue a feedback job when `retrain_due`; return its run id (None when not due). The job's config records
    the newest decision id at queueing, so no process queues another before N more decisions."""
    if not retrain_due(dataset_id, every):
        return None
    return jobs.submit("feedback", dataset_id, {"reason": f"{every} new decisions",
                                                "decision_max_id": acc_db.last_decision_id()},
                       started_by=started_by, launch=launch)


def run_feedback_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body of "feedback"."""
    return train_model(run.dataset_id, run_id=run.id, progress=ctx.progress, should_stop=ctx.should_stop)


# -- what the Review page and the CLI show ---------------------------------------------------------------------

def model_status(dataset: str | int) -> dict[str, Any]:
    """The latest model: version, trained_on, cv_auc, calibration, scored, created_at (version None if none)."""
    info = ds_db.get_dataset(dataset)
    model = acc_db.latest_model(info.id)
    running = active_job(info.id)
    base = {"dataset": info.name, "job_running": running.id if running is not None else None}
    if model is None:
        return {**base, "version": None, "trained_on": 0, "cv_auc": None, "scored": 0, "calibration": {}}
    return {**base, "version": model["version"], "model_id": model["id"], "trained_on": model["trained_on_decisions"],
            "cv_auc": model["cv_auc"], "scored": acc_db.score_count(model["id"]), "calibration": model["calibration"],
            "created_at": model["created_at"].isoformat(timespec="seconds"), "summary": model["summary"]}


def calibration_figure(status: dict[str, Any]):  # noqa: ANN201 - a plotly Figure
    """Predicted vs observed acceptance of the model's out-of-fold predictions, with the diagonal."""
    import plotly.graph_objects as go

    cal = status.get("calibration") or {}
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                             line={"dash": "dash", "color": "grey"}))
    if cal.get("predicted"):
        fig.add_trace(go.Scatter(x=cal["predicted"], y=cal["observed"], mode="lines+markers", name="acceptance model"))
    auc = status.get("cv_auc")
    title = f"model v{status.get('version')}: cross-validated AUC {auc:.2f}" if auc is not None else "calibration"
    fig.update_layout(title=title, xaxis_title="predicted probability of acceptance",
                      yaxis_title="share accepted by reviewers", xaxis_range=[0, 1], yaxis_range=[0, 1], height=320)
    return fig


def estimate_quota(row: dict[str, Any]) -> dict[str, Any]:
    """For one class_summary row: accepted so far, remaining to the quota, the acceptance rate of its decided
    candidates and about how many more decisions the quota takes at that rate (None when none was accepted yet)."""
    decided = int(row["accepted"]) + int(row["rejected"])
    rate = row["accepted"] / decided if decided else None
    remaining = max(int(row["quota"] or 0) - int(row["accepted_final"]), 0)
    needed = 0 if remaining == 0 else (math.ceil(remaining / rate) if rate else None)
    return {"class_name": row["class_name"], "quota": row["quota"], "accepted": row["accepted_final"],
            "remaining": remaining, "acceptance_rate": rate, "decisions_needed": needed}


def quota_estimate(dataset_id: int) -> list[dict[str, Any]]:
    """`estimate_quota` of every class that has a quota."""
    from wbc_core.review_model import class_summary

    return [estimate_quota(row) for row in class_summary(dataset_id) if row["quota"]]


def quota_estimate_text(row: dict[str, Any]) -> str | None:
    """The quota gauge's line for a class_summary row: "about N more decisions to reach the quota at the current
    acceptance rate (R%)"; None without a quota."""
    if not row.get("quota"):
        return None
    est = estimate_quota(row)
    if est["remaining"] == 0:
        return "Quota reached."
    if est["decisions_needed"] is None:
        return "No candidate of this class accepted yet, so there is no acceptance rate to estimate from."
    return (f"About {est['decisions_needed']} more decisions to reach the quota at the current acceptance rate "
            f"({est['acceptance_rate']:.0%} of decided candidates).")
