"""The product's vocabulary: every closed set of words, defined once.

Roles, recipes, run statuses, job kinds, verdicts, origins and splits are used by the database (CHECK
constraints), the domain, the pages' choices and the CLI's choices. They live here, in the lowest layer,
because the database layer may import nothing from `wbc_core`; everyone else imports them from here
(`wbc_core.vocabulary` re-exports nothing: import from `db.vocabulary`).
"""

from __future__ import annotations

from collections.abc import Iterable

# -- cells ---------------------------------------------------------------------------------------------------
ORIGINS = ("real", "synthetic")
SPLITS = ("train", "val", "test")
DATASET_KINDS = ("real", "demo", "bloodmnist")

# -- people --------------------------------------------------------------------------------------------------
ROLES = ("admin", "reviewer", "viewer")
ROLE_ORDER = ("viewer", "reviewer", "admin")  # least privileged first, for "that needs the X role"
USER_SOURCES = ("local", "oidc")

# -- review --------------------------------------------------------------------------------------------------
VERDICTS = ("accept", "reject", "relabel", "undo")

# -- classifier recipes --------------------------------------------------------------------------------------
RECIPES = ("real", "curated", "all-synthetic")
ABLATION = "ablation"  # not a recipe: every recipe with the same seed(s) and settings, as one group
LAUNCH_CHOICES = (*RECIPES, ABLATION)

# -- runs and jobs -------------------------------------------------------------------------------------------
# A run is one unit of background work with its own OS process; its kind names the job body that runs it.
TRAINING_KINDS = ("gan", "classifier")  # runs that train a model (the runs tables of Generate and Dashboard)
JOB_KINDS = (
    "gan",  # train a class-conditional GAN
    "classifier",  # train a classifier on a recipe's frozen training set
    "generate",  # sample candidates from a GAN checkpoint into the review queue, then score them
    "score",  # (re)score a dataset's candidates with the judge, for review sorting
    "quality",  # quality metrics of one GAN checkpoint
    "judge",  # train (or load) a dataset's quality judge
    "embedding",  # the 2-D map of real and synthetic cells on the Dashboard
    "import",  # import a folder, an uploaded zip, the demo or BloodMNIST into a new dataset
    "feedback",  # train a dataset's acceptance model on the consensus decisions, then score its pending candidates
    # score a finished classifier run on another dataset's real cells, with the share of cells far from its
    # training cells (wbc_core.ood): a model trained in one lab answers confidently on another lab's cells
    "evaluate",
    "selftest",  # a torch-free job for tests of the job machinery
)
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


def sql_in(column: str, values: Iterable[str]) -> str:
    """A CHECK constraint body `column IN ('a', 'b')` built from a vocabulary tuple (values are our own words)."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"
