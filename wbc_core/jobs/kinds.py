"""The job kinds: one registry that maps each kind of long work to its job body.

Every computation that takes more than about a second runs as a job in its own OS process (see
`wbc_core.jobs.worker`): the page or CLI only creates the run row and launches it, then polls. A job body
has the signature `body(run: RunInfo, ctx: JobContext) -> dict` (the run's result JSON); it reports through
`ctx.progress` and stops early when `ctx.should_stop()` says so. Bodies are named by dotted path and
imported only in the worker, so the page server never loads torch to start one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db.vocabulary import JOB_KINDS


@dataclass(frozen=True)
class JobKind:
    """One kind of background work."""

    name: str  # a word of db.vocabulary.JOB_KINDS (the run's kind column)
    body: str  # "module:function" of the job body
    label: str  # what the UI calls it ("GAN training", "candidate generation")
    trains: bool = False  # a training run (listed on the Generate and Dashboard run tables)

    def load(self) -> Callable[..., dict[str, Any]]:
        module, _, function = self.body.partition(":")
        return getattr(importlib.import_module(module), function)


KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("gan", "wbc_core.gan_runs:run_gan_job", "GAN training", trains=True),
    JobKind("classifier", "wbc_core.retrain:run_classifier_job", "classifier training", trains=True),
    JobKind("generate", "wbc_core.generation:run_generate_job", "candidate generation"),
    JobKind("score", "wbc_core.generation:run_score_job", "candidate scoring"),
    JobKind("quality", "wbc_core.generation:run_quality_job", "checkpoint quality"),
    JobKind("judge", "wbc_core.generation:run_judge_job", "judge training"),
    JobKind("embedding", "wbc_core.embedding_jobs:run_embedding_job", "embedding map"),
    JobKind("import", "wbc_core.import_jobs:run_import_job", "import"),
    JobKind("feedback", "wbc_core.feedback:run_feedback_job", "acceptance model training"),
    JobKind("evaluate", "wbc_core.ood:run_evaluate_job", "evaluation on another dataset"),
    JobKind("selftest", "wbc_core.jobs.selftest:run_selftest", "self-test"),
)}
assert tuple(KINDS) == JOB_KINDS, "every job kind of the vocabulary has exactly one registry entry"


def kind(name: str) -> JobKind:
    """The registry entry of a kind; ValueError naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r}: one of {', '.join(KINDS)}") from None
