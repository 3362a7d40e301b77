"""ORM models: datasets, images (real cells and synthetic candidates), runs, metrics, jobs,
checkpoints and review decisions. The schema itself is created by Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.vocabulary import JOB_KINDS, ORIGINS, ROLES, RUN_STATUSES, SPLITS, USER_SOURCES, VERDICTS, sql_in


def utcnow() -> datetime:
    """Naive UTC now; every timestamp in the database is naive UTC (SQLite has no time zones)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # real | demo | bloodmnist
    source: Mapped[str] = mapped_column(Text, default="")  # folder, zip or npz it came from
    class_names: Mapped[list[Any]] = mapped_column(JSON)  # ordered; index = class id everywhere
    image_size: Mapped[int] = mapped_column(Integer, default=64)  # working size for GAN and classifier
    split_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    split_hash: Mapped[str] = mapped_column(String(64), default="")
    import_report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Consensus rule and per-class quotas: {"min_agreeing": k, "min_votes": n, "quotas": {class: target}}.
    review_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # "Deleted" = archived: hidden from lists and pickers, kept for the audit (its decisions); name freed.
    archived_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    archived_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint(sql_in("origin", ORIGINS), name="ck_images_origin"),
        CheckConstraint("split IS NULL OR " + sql_in("split", SPLITS), name="ck_images_split"),
        # Science hygiene at the lowest layer: a synthetic image has no split at all, so it can
        # never be selected as val or test, and every real image has one.
        CheckConstraint(
            "(origin = 'synthetic' AND split IS NULL) OR (origin = 'real' AND split IS NOT NULL)",
            name="ck_images_synthetic_has_no_split",
        ),
        Index("ix_images_queue", "dataset_id", "origin", "class_name", "id"),
        Index("ix_images_split", "dataset_id", "split", "class_name"),
        Index("ix_images_sha256", "dataset_id", "sha256"),
        Index("ix_images_gan_run", "gan_run_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    origin: Mapped[str] = mapped_column(String(10))
    class_name: Mapped[str] = mapped_column(String(100))  # label (real) or intended class (candidate)
    split: Mapped[str | None] = mapped_column(String(5), nullable=True)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to WBC_HOME
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text, default="")  # original file, or "gan:<run>/step_<n>/seed_<s>#<i>"
    note: Mapped[str | None] = mapped_column(Text, nullable=True)  # e.g. conversion applied at import
    gan_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    checkpoint_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Scores for sorting candidates in review (filled by quality scoring; NULL until then).
    judge_prob: Mapped[float | None] = mapped_column(Float, nullable=True)
    judge_top_class: Mapped[str | None] = mapped_column(String(100), nullable=True)
    nearest_real_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    nearest_real_distance: Mapped[float | None] = mapped_column(Float, nullable=True)
    memorised: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Sampled with steering (kept by predicted acceptance) and by which acceptance model (no FK: see 0007).
    steered: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    steer_model_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# The review queue's scored orders, one index per score and direction, ties by id (migration 0010).
for _name, _score in (("judge", Image.judge_prob), ("nearest", Image.nearest_real_distance)):
    Index(f"ix_images_queue_{_name}_asc", Image.dataset_id, Image.origin, Image.class_name, _score, Image.id)
    Index(f"ix_images_queue_{_name}_desc", Image.dataset_id, Image.origin, Image.class_name, _score.desc(), Image.id)
Index("ix_images_queue_step", Image.dataset_id, Image.origin, Image.class_name, Image.checkpoint_step, Image.gan_run_id,
      Image.id)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(sql_in("kind", JOB_KINDS), name="ck_runs_kind"),
        CheckConstraint(sql_in("status", RUN_STATUSES), name="ck_runs_status"),
        Index("ix_runs_dataset_kind", "dataset_id", "kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), nullable=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    recipe: Mapped[str | None] = mapped_column(String(30), nullable=True)  # classifier: real | curated | ...
    group_name: Mapped[str | None] = mapped_column(String(100), nullable=True)  # e.g. an ablation
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    device: Mapped[str | None] = mapped_column(String(40), nullable=True)
    split_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    train_set_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)  # exact images trained on
    train_set_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    train_set_summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # counts per class/origin
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # final metrics
    artifact_dir: Mapped[str | None] = mapped_column(Text, nullable=True)  # relative to WBC_HOME
    started_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the acting user's name
    cancelled_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    archived_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # "deleted": hidden, kept
    archived_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_name_step", "run_id", "name", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)  # GAN step or classifier epoch
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), unique=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hostname: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    executor: Mapped[str] = mapped_column(String(20), default="local", server_default="local")  # local | ray
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)  # e.g. the Ray submission id
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_checkpoints_run_step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # relative to WBC_HOME
    grid_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Decision(Base):
    """One reviewer's verdict on one candidate. Append-only: rows are never updated or deleted
    (database triggers refuse it); the current verdict is the latest row per reviewer."""

    __tablename__ = "decisions"
    __table_args__ = (
        CheckConstraint(sql_in("verdict", VERDICTS), name="ck_decisions_verdict"),
        CheckConstraint("verdict != 'relabel' OR new_class IS NOT NULL", name="ck_decisions_relabel_class"),
        Index("ix_decisions_image", "image_id", "reviewer", "id"),
        Index("ix_decisions_reviewer", "reviewer", "created_at"),
        # The current verdict lookups (queue, consensus) seek on exactly these columns.
        Index("ix_decisions_current", "image_id", "reviewer", "adjudication", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"))
    reviewer: Mapped[str] = mapped_column(String(100))
    verdict: Mapped[str] = mapped_column(String(10))
    new_class: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # An admin's ruling on a disputed candidate; the latest standing one overrides the reviewers' consensus.
    adjudication: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class User(Base):
    """A person who signs in: local password (PBKDF2 hash) or an OIDC identity (no password)."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(sql_in("role", ROLES), name="ck_users_role"),
        CheckConstraint(sql_in("source", USER_SOURCES), name="ck_users_source"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200), default="")  # "" for OIDC users: no local login
    role: Mapped[str] = mapped_column(String(20))
    display_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source: Mapped[str] = mapped_column(String(10), default="local", server_default="local")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SignInFailure(Base):
    """Failed sign-ins counted per key ("user:<name>" or "client:<id>"), for back-off; cleared by a success
    (the account's key) or an admin's unlock."""

    __tablename__ = "sign_in_failures"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class SignInSession(Base):
    """A kept sign-in (the browser holds a signed token naming this row): ends at expires_at, or when revoked
    (sign-out, the account disabled). wbc_core.auth signs and checks the tokens; this row only says it is live."""

    __tablename__ = "sign_in_sessions"
    __table_args__ = (Index("ix_sign_in_sessions_user", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class BlindItem(Base):
    """A real val cell shown unannounced in one reviewer's candidate queue (blinded realism test)."""

    __tablename__ = "blind_items"
    __table_args__ = (
        UniqueConstraint("image_id", "reviewer", name="uq_blind_items_image_reviewer"),
        Index("ix_blind_items_reviewer", "dataset_id", "reviewer"),
        # A class's items with their positions from the index alone (db.review_queue._blind_part; migration 0012).
        Index("ix_blind_items_class", "dataset_id", "reviewer", "class_name", "image_id", "position"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    reviewer: Mapped[str] = mapped_column(String(100))
    # The cell's class, copied from its image when the item is made (a real cell's class never changes).
    class_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Stable hash of (reviewer, image) in [0, 1): where the cell sits among the candidates in any queue order.
    position: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AcceptanceModel(Base):
    """One trained acceptance model of a dataset: predicts whether a person accepts a candidate. Advisory
    only (review order, steering); it never decides a cell. The model file lives under WBC_HOME."""

    __tablename__ = "acceptance_models"
    __table_args__ = (UniqueConstraint("dataset_id", "version", name="uq_acceptance_models_dataset_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per dataset
    trained_on_decisions: Mapped[int] = mapped_column(Integer)  # consensus-decided candidates it learnt from
    cv_auc: Mapped[float | None] = mapped_column(Float, nullable=True)  # None when too few of one verdict
    calibration: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {"predicted": [...], "observed": [...]}
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # counts per class, features, folds
    path: Mapped[str] = mapped_column(Text)  # relative to WBC_HOME
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # set_scores calls so far, bumped with the scores they write (migration 0013; db.acceptance.ScoreMemo)
    score_writes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AcceptanceScore(Base):
    """One model's predicted probability that a person accepts one candidate."""

    __tablename__ = "acceptance_scores"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("acceptance_models.id", ondelete="CASCADE"), primary_key=True)
    p_accept: Mapped[float] = mapped_column(Float)


# The acceptance orders' walks, ties by image id (migration 0011): "most likely" and the lower half of "most
# uncertain" go down the scores, its upper half up.
Index("ix_acceptance_scores_asc", AcceptanceScore.model_id, AcceptanceScore.p_accept, AcceptanceScore.image_id)
Index("ix_acceptance_scores_desc", AcceptanceScore.model_id, AcceptanceScore.p_accept.desc(), AcceptanceScore.image_id)
