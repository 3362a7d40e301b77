"""The product's words for the domain, the pages and the CLI: re-exported from `db.vocabulary`, where they are
defined once (the database's CHECK constraints are built from the same tuples)."""

from db.vocabulary import (
    ABLATION,
    ACTIVE_STATUSES,
    DATASET_KINDS,
    FINAL_STATUSES,
    JOB_KINDS,
    LAUNCH_CHOICES,
    ORIGINS,
    RECIPES,
    ROLE_ORDER,
    ROLES,
    RUN_STATUSES,
    SPLITS,
    TRAINING_KINDS,
    USER_SOURCES,
    VERDICTS,
)

__all__ = ["ABLATION", "ACTIVE_STATUSES", "DATASET_KINDS", "FINAL_STATUSES", "JOB_KINDS", "LAUNCH_CHOICES", "ORIGINS",
           "RECIPES", "ROLES", "ROLE_ORDER", "RUN_STATUSES", "SPLITS", "TRAINING_KINDS", "USER_SOURCES", "VERDICTS"]
