"""CLI of GAN runs beyond train-gan / resume-gan: `gan finetune RUN --steps N --reward-weight W` (a job, followed).

Loaded by wbc_core.cli through EXTENSION_MODULES: register(subparsers) adds the commands and COMMANDS maps
each name to handler(args) -> dict (printed as JSON with --json; "_text" is the human form).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the main parser."""
    s = sub.add_parser("gan", help="GAN runs: fine-tune one with the acceptance model")
    actions = s.add_subparsers(dest="gan_action", required=True, metavar="finetune")
    f = actions.add_parser("finetune", help="continue a finished GAN run's newest checkpoint with the dataset's "
                                            "acceptance model as an extra reward for the generator (a new GAN run)")
    f.add_argument("run", type=int, help="the GAN run to fine-tune")
    f.add_argument("--steps", type=int, required=True, help="fine-tuning steps after the run's last step")
    f.add_argument("--reward-weight", type=float, required=True,
                   help="weight of -log p(accepted) in the generator's loss (the adversarial loss has weight 1)")
    f.add_argument("--anchor-weight", type=float, default=None,
                   help="weight of the anchor that keeps each cell near its parent's cell from the same latent code "
                        "(default: wbc_core.gan_finetune.DEFAULT_ANCHOR_WEIGHT; 0: no anchor)")
    f.add_argument("--step", type=int, default=None, help="the checkpoint to start from (only the newest can be)")
    f.add_argument("--detach", action="store_true", help="queue the job and return at once")


def _gan(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core import gan_finetune
    from wbc_core.cli.main import _follow, acting_user

    user = acting_user(args)
    run_id = gan_finetune.start_finetune(args.run, args.steps, args.reward_weight, step=args.step, user=user,
                                         anchor_weight=args.anchor_weight)
    out = _follow(run_id, args.detach, "fine-tuning", user)
    if out.get("status") == "succeeded":
        tuned = out.get("finetune", {})
        reward = tuned.get("reward_p_accept")
        out["_text"] = (f"fine-tune run {run_id} of GAN run {args.run}: {out['steps_done']} steps"
                        + (f", mean predicted acceptance of its last cells {reward:.3f}" if reward is not None else "")
                        + f"; generate candidates with `generate --run {run_id}`")
    return out


COMMANDS = {"gan": _gan}
