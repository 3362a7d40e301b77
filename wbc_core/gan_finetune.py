"""GAN fine-tuning with the acceptance model as a reward: step 2 of steered generation (issue 15).

A fine-tune is a GAN run (kind "gan") with a parent. It resumes the parent's newest checkpoint (generator, EMA,
discriminator, optimisers, RNG streams) and trains `steps` more steps under the parent's config, with one more term in
the generator's loss: reward_weight * -log sigmoid(acceptance logit of the intended class). Its run config is the
parent's, with steps = parent step + steps, `resume_from_checkpoint` = the parent's checkpoint (so the GAN job body
resumes it as it resumes any continued run) and a `finetune` block: parent run and step, acceptance model id and
version, reward weight, steps, seed. Every checkpoint it writes (under its own run folder) carries the same block.

Why kind "gan" and not a job kind of its own: everything that lists, samples, scores or tracks GAN runs (the Generate
page, `generate`, the quality job, tracking, GPU dispatch) keys on kind "gan". A fine-tune is a resumed GAN run with
one more loss term, so as a "gan" run it shows and works everywhere unchanged (cancel and resume-gan included), with no
new kind, no migration and no second copy of the job body. Candidates sampled from it are recorded as steered, by the
acceptance model it was tuned with (wbc_core.gan_runs.generate_candidates).

The reward (`AcceptanceReward`) is the stored acceptance model made differentiable. That model is StandardScaler +
LogisticRegression on [judge features, judge probability of the offered class, distance to the nearest real train cell
in judge features, one-hot of the class, the judge features again in the class's own block] (wbc_core.feedback.
FEATURES; models saved before the last block are read without it). Here the frozen judge runs on the generator's
images, the judge probability comes from the judge's own linear head, the nearest-real distance is the exact minimum
over the judge Reference's train features (torch.cdist: differentiable almost everywhere, so no surrogate is needed),
and the scaler and linear model are the stored coefficients: its logit is the sklearn model's decision_function on the
same cells (a test checks this). The discriminator keeps its usual step, so the generator cannot drift onto images that
only the reward likes; the live generator starts from the parent's EMA weights and the EMA warm-up restarts there, so
the averaged generator follows the fine-tune. The anchor (anchor_weight, DEFAULT_ANCHOR_WEIGHT) adds the judge-feature
distance of each cell to the parent's cell from the same latent code, so the reward can move a cell only as far as it
is worth, not pull every cell to one look.

Measured (bench/feedback.py, medium: PBC 300 cells/class at 32 px, 1,200-step parent, 400 fine-tuning steps, 2 CPU
cores; bench/results/feedback_medium_finetune*.json): the reward is easily over-optimised. At weight 0.1 the model's
own p_accept of G's cells rose to 0.74 and the hidden reviewer's acceptance rose (3.5% -> 14.9%, all of it eosinophils),
but coverage fell from 0.19 to 0.003 and the FD ratio rose five-fold; at 0.01 the same, milder (coverage 0.03, FD ratio
x2.6), while the control (the same 400 steps at a negligible weight) improved coverage and FD ratio. A likely cause: the
model was one linear direction in judge features shared by all classes (the class entered only as an offset), so
pushing it moved every class towards the look of the most-accepted one. Since then the model has a per-class block and
the fine-tune an anchor: at weight 0.01 with anchor 1.0 coverage stayed at 0.197 (FD ratio 22.7), but the gain fell to
+2.2 points, below the control's +4.5, as the anchor also holds G against ordinary GAN learning. The default keeps the
anchor (1.0: no collapse); a smaller weight trades safety for gain and is not measured yet.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from db import acceptance as acc_db
from db import runs as runs_db
from wbc_core import jobs, limits
from wbc_core.auth import User, authorize
from wbc_core.context import current
from wbc_core.gan_runs import GanRunError, checkpoint_path, gan_training_rows

if TYPE_CHECKING:
    import torch

    from wbc_core.gan.train import TrainHooks

PERMISSION = "train"  # the same permission as starting or resuming a GAN run
CHECKPOINTS_PER_FINETUNE = 4  # a fine-tune saves (about) this many checkpoints, so its curve has a few points
# The anchor: G's loss also gets anchor_weight * (judge-feature distance of each cell to the parent's cell from the
# same latent code, in units of the real cells' feature spread). Why: without it the reward was over-optimised
# (coverage 0.19 -> 0.03 at reward weight 0.01, bench/feedback.py medium): every cell moved to the most-accepted
# look. The anchor lets each cell move only as far as the reward is worth. The default is a starting point; the
# measured trade-off is in BENCHMARKS.md.
DEFAULT_ANCHOR_WEIGHT = 1.0


class FinetuneError(GanRunError):
    """A fine-tune that cannot be started as asked (no acceptance model, wrong run, unusable checkpoint)."""


def _no_model_message(dataset_name: str) -> str:
    return (f"dataset {dataset_name!r} has no acceptance model yet, and fine-tuning needs it as its reward: train the "
            "acceptance model first: review some candidates on the Review page (it retrains itself after every N "
            "decisions, set on the Admin page's review settings) or run "
            f"`python -m wbc_core feedback train --dataset {dataset_name}`")


def start_finetune(gan_run_id: int, steps: int, reward_weight: float, step: int | None = None, *, user: User,
                   anchor_weight: float | None = None, launch: bool = True) -> int:
    """Record a fine-tune of a finished GAN run's checkpoint with the dataset's acceptance model; return its run id.

    steps: fine-tuning steps after the parent's step; reward_weight: weight of the acceptance reward in G's loss;
    step: the parent's checkpoint (default and only choice: its newest, the one that keeps D and the optimisers);
    anchor_weight: weight of the anchor to the parent's cells (None: DEFAULT_ANCHOR_WEIGHT; 0: no anchor).
    user is the acting account (needs the train permission); the new run records it as its starter."""
    from db import datasets as ds_db
    from wbc_core.gan.config import GanConfig
    from wbc_core.hardware import cuda_visible

    who = authorize(user, PERMISSION).username
    steps = int(limits.check("finetune_steps", steps))
    weight = float(limits.check("finetune_reward_weight", reward_weight))
    anchor = float(limits.check("finetune_anchor_weight",
                                DEFAULT_ANCHOR_WEIGHT if anchor_weight is None else anchor_weight))
    try:
        parent = runs_db.get_run(gan_run_id)
    except LookupError:
        raise FinetuneError(f"there is no run {gan_run_id} to fine-tune") from None
    if parent.kind != "gan":
        raise FinetuneError(f"run {gan_run_id} is a {parent.kind} run, not a GAN run: only GAN runs can be fine-tuned")
    if parent.active:
        raise FinetuneError(f"GAN run {gan_run_id} is still {parent.status}: wait for it to finish (or cancel it), "
                            "then fine-tune its last checkpoint")
    path, newest = checkpoint_path(gan_run_id)
    if step is not None and int(step) != newest:
        raise FinetuneError(f"only the newest checkpoint of a run (step {newest} of run {gan_run_id}) keeps the "
                            f"discriminator and optimiser state that fine-tuning continues from; step {step} keeps the "
                            f"generator only. Fine-tune step {newest} instead")
    info = ds_db.get_dataset(parent.dataset_id)
    model = acc_db.latest_model(info.id)
    if model is None:
        raise FinetuneError(_no_model_message(info.name))
    base = GanConfig.from_dict(parent.config)
    if base.device.startswith("cuda") and not cuda_visible() and not current().settings.ray_address:
        raise FinetuneError(f"GAN run {gan_run_id} trained on a CUDA GPU and this machine has none: fine-tune it on "
                            "the GPU server")
    total = newest + steps
    every = max(1, -(-steps // CHECKPOINTS_PER_FINETUNE))
    config = base.replace(steps=int(limits.check("gan_steps", total, "the parent's step plus the fine-tuning steps")),
                          checkpoint_every=min(base.checkpoint_every, every),
                          sample_every=min(base.sample_every, every))
    rows = gan_training_rows(info.id)
    limits.check_gan_job(config, len(rows))
    block = {"parent_run": int(gan_run_id), "parent_step": int(newest), "acceptance_model_id": int(model["id"]),
             "acceptance_model_version": int(model["version"]), "reward_weight": weight, "anchor_weight": anchor,
             "steps": steps,
             "seed": int(config.seed)}
    run_config = {**config.to_dict(), "resume_from_checkpoint": current().relative(path), "finetune": block}
    run_id = runs_db.create_run("gan", info.id, run_config, seed=config.seed, split_hash=parent.split_hash,
                                started_by=who)
    runs_db.set_training_set(run_id, parent.train_set_hash or "", parent.train_set_size or 0,
                             parent.train_set_summary)
    if launch:
        jobs.launch(run_id)
    return run_id


def finetune_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The `finetune` block of a GAN run's config (None for a plain GAN run)."""
    block = config.get("finetune")
    return block if isinstance(block, dict) else None


def describe(config: dict[str, Any]) -> str | None:
    """One line for the Generate page: what a fine-tune run was tuned from (None for a plain GAN run)."""
    block = finetune_of(config or {})
    if block is None:
        return None
    return (f"Fine-tuned from GAN run {block['parent_run']} (step {block['parent_step']}) for {block['steps']} steps "
            f"with acceptance model v{block['acceptance_model_version']} as a reward (weight "
            f"{block['reward_weight']:g}, anchor to the parent {float(block.get('anchor_weight', 0.0)):g}); its "
            "candidates are recorded as steered by that model.")


# -- the differentiable reward ----------------------------------------------------------------------------------

def _linear_parts(blob: dict[str, Any]) -> tuple[Any, Any, Any, float]:
    """(scaler mean, scaler scale, coefficients, intercept) of a stored StandardScaler + LogisticRegression."""
    steps = blob["pipeline"].named_steps
    scaler, model = steps["scale"], steps["model"]
    mean = scaler.mean_ if scaler.with_mean else 0.0 * scaler.scale_
    return mean, scaler.scale_, model.coef_.reshape(-1), float(model.intercept_.reshape(-1)[0])


def build_reward(judge_model: Any, judge_classes: list[str], train_features: torch.Tensor,  # noqa: ANN401
                 blob: dict[str, Any], gan_classes: list[str], image_size: int,
                 parent: Any = None) -> Any:  # noqa: ANN401 - parent: a frozen Generator; returns AcceptanceReward
    """An AcceptanceReward for a generator of gan_classes (see the module docstring); torch is imported here.

    parent: the generator the fine-tune started from (frozen, eval), needed by `anchor`."""
    import torch
    from torch import nn

    from wbc_core.classifier.models import FeatureExtractor, as_wbc_classifier
    from wbc_core.feedback import feature_order, input_width

    class AcceptanceReward(nn.Module):
        """logit(accepted | cell offered as its class) of generator output in [-1, 1], differentiable in the cells."""

        def __init__(self) -> None:
            super().__init__()
            mean, scale, coef, intercept = _linear_parts(blob)
            judged = as_wbc_classifier(copy.deepcopy(judge_model)).eval().requires_grad_(False)
            self.extractor = FeatureExtractor(judged)
            model_classes = list(blob["class_names"])
            dim = int(blob.get("feature_spec", {}).get("judge_features", train_features.shape[1]))
            self.per_class_block = "class_judge_features" in feature_order(blob)
            if coef.shape[0] != input_width(feature_order(blob), dim, len(model_classes)):
                raise FinetuneError(f"the acceptance model has {coef.shape[0]} inputs but the judge gives {dim} "
                                    "features: it was trained with another judge; train the acceptance model again")
            missing = [c for c in gan_classes if c not in model_classes or c not in judge_classes]
            if missing:
                raise FinetuneError(f"the acceptance model or the judge does not know the classes {missing}")
            f32 = torch.float32
            self.register_buffer("mean", torch.as_tensor(mean, dtype=f32))
            self.register_buffer("scale", torch.as_tensor(scale, dtype=f32))
            self.register_buffer("coef", torch.as_tensor(coef, dtype=f32))
            self.register_buffer("intercept", torch.tensor(intercept, dtype=f32))
            self.register_buffer("train_features", train_features.detach().float().clone())
            # The anchor's unit: the real train cells' total feature variance (mean squared distance to their mean).
            self.register_buffer("spread", train_features.detach().float().var(dim=0).sum().clamp_min(1e-8))
            self.parent = parent
            self.register_buffer("model_index", torch.tensor([model_classes.index(c) for c in gan_classes]))
            self.register_buffer("judge_index", torch.tensor([judge_classes.index(c) for c in gan_classes]))
            self.n_model_classes, self.image_size = len(model_classes), int(image_size)
            self.register_buffer("p_sum", torch.zeros(()))
            self.register_buffer("anchor_sum", torch.zeros(()))
            self.seen = self.steps_seen = 0

        def features(self, fake: torch.Tensor) -> torch.Tensor:
            """[B, D] judge features of generator output fake [B,3,S,S] in [-1, 1]."""
            import torch.nn.functional as F  # noqa: N812

            x = ((fake.float() + 1.0) * 0.5).clamp(0.0, 1.0)  # the judge takes float 0..1 (it normalises itself)
            if x.shape[-1] != self.image_size:  # as steering resizes cells to the judge's size
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                                  align_corners=False)
            return self.extractor(x).float()

        def logits(self, fake: torch.Tensor, y: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
            """[B] acceptance logits of generator output fake [B,3,S,S] in [-1, 1] offered as GAN classes y."""
            import torch.nn.functional as F  # noqa: N812

            feats = self.features(fake) if feats is None else feats
            # The judge's network may run under the training's autocast; the model on its features runs in fp32,
            # as it was fitted (in bf16 its logit would keep only about three significant digits).
            with torch.autocast(device_type=feats.device.type, enabled=False):
                probs = self.extractor.head(feats).float().softmax(dim=1)
                p = probs.gather(1, self.judge_index[y].view(-1, 1))
                nearest = torch.cdist(feats, self.train_features).min(dim=1).values.view(-1, 1)
                one_hot = F.one_hot(self.model_index[y], self.n_model_classes).float()
                blocks = [feats, p, nearest, one_hot]
                if self.per_class_block:  # feedback.design_matrix: the features again in the offered class's block
                    blocks.append((one_hot[:, :, None] * feats[:, None, :]).flatten(1))
                row = (torch.cat(blocks, dim=1) - self.mean) / self.scale
                return row @ self.coef + self.intercept

        def forward(self, fake: torch.Tensor, y: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
            """The reward loss: mean -log sigmoid(logit); also adds the batch's p_accept to the running mean."""
            import torch.nn.functional as F  # noqa: N812

            logit = self.logits(fake, y, feats)
            self.p_sum += torch.sigmoid(logit).detach().sum()  # stays on the device: no sync per step
            self.seen += int(logit.shape[0])
            return -F.logsigmoid(logit).mean()

        def anchor(self, feats: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            """Mean squared judge-feature distance between each cell and the parent's cell from the same (z, y),
            in units of the real cells' feature spread: 0 while G still draws what its parent drew."""
            if self.parent is None:
                raise FinetuneError("the anchor needs the parent generator")
            with torch.no_grad():
                before = self.features(self.parent(z, y))
            return ((feats - before) ** 2).sum(dim=1).mean() / self.spread

        def loss(self, fake: torch.Tensor, y: torch.Tensor, z: torch.Tensor, reward_weight: float,
                 anchor_weight: float) -> torch.Tensor:
            """G's extra loss of a fine-tune: reward_weight * reward + anchor_weight * anchor (judge runs once)."""
            feats = self.features(fake)
            out = reward_weight * self(fake, y, feats)
            self.steps_seen += 1
            if anchor_weight:
                anchor = self.anchor(feats, y, z)
                self.anchor_sum += anchor.detach()
                out = out + anchor_weight * anchor
            return out

        def take_metrics(self) -> dict[str, float]:
            """{"reward_p_accept": mean predicted acceptance of G's cells since the last call} (then reset)."""
            if not self.seen:
                return {}
            out = {"reward_p_accept": float(self.p_sum) / self.seen}
            if self.parent is not None:  # per step, as the batch count is per cell: anchor_sum / steps
                out["anchor_distance"] = float(self.anchor_sum) / max(1, self.steps_seen)
            self.p_sum.zero_()
            self.anchor_sum.zero_()
            self.seen = self.steps_seen = 0
            return out

    return AcceptanceReward()


def parent_generator(run: runs_db.RunInfo) -> Any:  # noqa: ANN401 - a frozen Generator
    """The generator a fine-tune started from (its parent checkpoint's EMA weights), frozen, for the anchor.

    Left in train mode, as the live generator is: its batch norm then uses the same batch's statistics, so at the
    first step the anchor is exactly 0 (the live generator starts from these weights) and it measures drift only."""
    from wbc_core.gan.sample import load_generator

    path = current().absolute(str(run.config.get("resume_from_checkpoint", "")))
    try:
        return load_generator(path).generator.train().requires_grad_(False)
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"the parent checkpoint of fine-tune {run.id} cannot be read for its anchor ({exc}); "
                            "start a new fine-tune from a readable checkpoint, or one with anchor weight 0") from exc


def reward_for_run(run: runs_db.RunInfo, gan_classes: list[str]):  # noqa: ANN201
    """The AcceptanceReward of a fine-tune run: its recorded acceptance model and the dataset's judge Reference
    (and its parent generator when the run has an anchor)."""
    from wbc_core.feedback import load_model
    from wbc_core.gan_runs import quality_reference

    block = finetune_of(run.config)
    if block is None:
        raise FinetuneError(f"run {run.id} is not a fine-tune")
    try:
        model = acc_db.get_model(int(block["acceptance_model_id"]))
    except LookupError:
        raise FinetuneError(f"acceptance model {block['acceptance_model_id']} of this fine-tune is gone; start a new "
                            "fine-tune") from None
    blob = load_model(model)
    ref = quality_reference(run.dataset_id, int(blob["image_size"]))
    parent = parent_generator(run) if float(block.get("anchor_weight", 0.0)) > 0 else None
    return build_reward(ref.judge.model, list(ref.judge.class_names), ref.train_features, blob, gan_classes,
                        ref.image_size, parent=parent)


def training_hooks(run: runs_db.RunInfo, gan_classes: list[str], device: str) -> TrainHooks:
    """What the GAN job body passes to train_gan for a fine-tune run: reward term, its metric, checkpoint block."""
    from wbc_core.gan.config import resolve_device
    from wbc_core.gan.train import TrainHooks

    block = dict(finetune_of(run.config) or {})
    reward = reward_for_run(run, gan_classes).to(resolve_device(device))
    weight, anchor = float(block["reward_weight"]), float(block.get("anchor_weight", 0.0))  # older runs: no anchor
    return TrainHooks(g_loss=lambda fake, y, z: reward.loss(fake, y, z, weight, anchor), metrics=reward.take_metrics,
                      checkpoint_extra={"finetune": block}, ema_restart_step=int(block["parent_step"]))
