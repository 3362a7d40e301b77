"""CLI of the acceptance model: `feedback train --dataset D` (a job, followed with progress) and `feedback status`.

Loaded by wbc_core.cli through EXTENSION_MODULES: register(subparsers) adds the commands and COMMANDS maps
each name to handler(args) -> dict (printed as JSON with --json; "_text" is the human form).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the main parser."""
    s = sub.add_parser("feedback", help="the acceptance model learnt from reviewers' decisions: train or status")
    actions = s.add_subparsers(dest="feedback_action", required=True, metavar="train|status")
    t = actions.add_parser("train", help="train the dataset's next acceptance model and score its candidates")
    t.add_argument("--dataset", required=True)
    t.add_argument("--detach", action="store_true", help="queue the job and return at once")
    st = actions.add_parser("status", help="the latest model: version, decisions trained on, AUC, candidates scored")
    st.add_argument("--dataset", required=True)


def _status_text(out: dict[str, Any]) -> str:
    if out["version"] is None:
        text = f"dataset {out['dataset']!r} has no acceptance model yet"
    else:
        auc = "n/a (too few of one verdict)" if out["cv_auc"] is None else f"{out['cv_auc']:.3f}"
        text = (f"dataset {out['dataset']!r}: acceptance model v{out['version']} ({out['created_at']}), trained on "
                f"{out['trained_on']} decided candidates, cross-validated AUC {auc}, {out['scored']} candidates scored")
    if out.get("job_running"):
        text += f"; retraining now (run {out['job_running']})"
    return text


def _feedback(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core import feedback

    if args.feedback_action == "status":
        out = feedback.model_status(args.dataset)
        out.pop("calibration", None)
        return {**out, "_text": _status_text(out)}
    from wbc_core.cli.main import _follow, acting_user

    user = acting_user(args)
    out = _follow(feedback.start_training(args.dataset, user=user), args.detach, "acceptance model", user)
    if out.get("status") == "succeeded":
        auc = "n/a" if out.get("cv_auc") is None else f"{out['cv_auc']:.3f}"
        out["_text"] = (f"acceptance model v{out['version']}: trained on {out['trained_on']} decided candidates, "
                        f"cross-validated AUC {auc} ({out['k_folds']} folds); scored {out['scored']} candidates")
    return out


COMMANDS = {"feedback": _feedback}
