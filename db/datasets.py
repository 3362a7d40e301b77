"""Queries on datasets and images (real cells and synthetic candidates)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from db import validate
from db.engine import Database, bound, read_session, write_session
from db.models import Dataset, Image, utcnow


class DatasetExists(ValueError):
    """A dataset with that name is already imported."""


class DatasetNotFound(LookupError):
    """No dataset with that name or id."""


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    kind: str
    source: str
    class_names: list[str]
    image_size: int
    split_config: dict[str, Any]
    split_hash: str
    import_report: dict[str, Any]
    archived_at: datetime | None = None  # set when "deleted": hidden from lists, kept for the audit
    archived_by: str | None = None


@dataclass(frozen=True)
class ImageRow:
    id: int
    class_name: str
    split: str | None
    origin: str
    path: str
    sha256: str


def _info(ds: Dataset) -> DatasetInfo:
    return DatasetInfo(ds.id, ds.name, ds.kind, ds.source, list(ds.class_names), ds.image_size,
                       dict(ds.split_config or {}), ds.split_hash, dict(ds.import_report or {}), ds.archived_at,
                       ds.archived_by)


def create_dataset(name: str, kind: str, source: str, class_names: list[str], split_config: dict[str, Any],
                   split_hash: str, import_report: dict[str, Any], images: Iterable[dict[str, Any]],
                   image_size: int = 64) -> int:
    """Insert a dataset and all its real images in one transaction; return the dataset id."""
    validate.text(name, "the dataset name", validate.DATASET_NAME_MAX, required=True)
    validate.texts(class_names, "the class name", validate.CLASS_NAME_MAX)
    validate.json_value(split_config, "the split settings")
    validate.json_value(import_report, "the import report")
    images = [_checked(row) for row in images]
    with write_session() as s:
        if s.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
            raise DatasetExists(f"a dataset named {name!r} already exists; choose another name")
        ds = Dataset(name=name, kind=kind, source=source, class_names=class_names, image_size=image_size,
                     split_config=split_config,
                     split_hash=split_hash, import_report=import_report)
        s.add(ds)
        s.flush()
        rows = [dict(row, dataset_id=ds.id) for row in images]
        if rows:
            s.execute(Image.__table__.insert(), rows)
        return ds.id


def add_images(dataset_id: int, rows: list[dict[str, Any]]) -> list[int]:
    """Insert image rows (e.g. generated candidates) for a dataset; return their ids in order."""
    if not rows:
        return []
    rows = [_checked(row) for row in rows]
    with write_session() as s:
        # insertmanyvalues batches the rows and keeps RETURNING aligned with the input order.
        result = s.scalars(
            insert(Image).returning(Image.id, sort_by_parameter_order=True),
            [dict(row, dataset_id=dataset_id) for row in rows],
        )
        return list(result)


def get_dataset(name_or_id: str | int) -> DatasetInfo:
    """Look a dataset up by name (archived ones excluded) or id (any); raise DatasetNotFound with the known
    names otherwise."""
    with read_session() as s:
        if isinstance(name_or_id, int):
            ds = s.get(Dataset, name_or_id)
        else:
            ds = s.scalar(select(Dataset).where(Dataset.name == name_or_id, Dataset.archived_at.is_(None)))
        if ds is None:
            known = ", ".join(s.scalars(select(Dataset.name).where(Dataset.archived_at.is_(None))
                                        .order_by(Dataset.name))) or "none yet"
            raise DatasetNotFound(f"no dataset {name_or_id!r} (known datasets: {known})")
        return _info(ds)


def list_datasets(include_archived: bool = False) -> list[DatasetInfo]:
    """Datasets, newest first; archived ("deleted") ones only when asked for."""
    query = select(Dataset).order_by(Dataset.id.desc())
    if not include_archived:
        query = query.where(Dataset.archived_at.is_(None))
    with read_session() as s:
        return [_info(ds) for ds in s.scalars(query)]


def rename_dataset(dataset_id: int, new_name: str) -> None:
    """Give a dataset (not archived) a new, free name; its cells and runs keep pointing at it by id."""
    validate.text(new_name, "the dataset name", validate.DATASET_NAME_MAX, required=True)
    with write_session() as s:
        ds = s.get(Dataset, dataset_id)
        if ds is None or ds.archived_at is not None:
            raise DatasetNotFound(f"no dataset with id {dataset_id} (or it was deleted)")
        taken = s.scalar(select(Dataset.id).where(Dataset.name == new_name, Dataset.id != dataset_id))
        if taken is not None:
            raise DatasetExists(f"a dataset named {new_name!r} already exists; choose another name")
        ds.name = new_name


def archive_dataset(dataset_id: int, archived_name: str, by: str) -> None:
    """Archive a dataset and its runs: hidden from lists, kept (with cells and decisions) for the audit; its
    name becomes archived_name so that the old one is free again."""
    from db.models import Run
    from db.vocabulary import ACTIVE_STATUSES

    validate.text(archived_name, "the archived name", validate.DATASET_NAME_MAX, required=True)
    with write_session() as s:
        ds = s.get(Dataset, dataset_id)
        if ds is None or ds.archived_at is not None:
            raise DatasetNotFound(f"no dataset with id {dataset_id} (or it was deleted already)")
        active = s.scalars(select(Run.id).where(Run.dataset_id == dataset_id, Run.status.in_(ACTIVE_STATUSES))).all()
        if active:
            raise ValueError(f"dataset {ds.name!r} has runs still queued or running ({', '.join(map(str, active))}); "
                             "cancel them and wait for them to end before deleting it")
        now = utcnow()
        ds.name, ds.archived_at, ds.archived_by = archived_name, now, by
        s.execute(update(Run).where(Run.dataset_id == dataset_id, Run.archived_at.is_(None))
                  .values(archived_at=now, archived_by=by))


def image_counts(dataset_id: int) -> list[dict[str, Any]]:
    """Rows of {class_name, origin, split, n} for a dataset."""
    with read_session() as s:
        rows = s.execute(
            select(Image.class_name, Image.origin, Image.split, func.count())
            .where(Image.dataset_id == dataset_id)
            .group_by(Image.class_name, Image.origin, Image.split)
        ).all()
    return [{"class_name": c, "origin": o, "split": sp, "n": n} for c, o, sp, n in rows]


def has_images_under(prefix: str, database: Database | None = None) -> bool:
    """Whether any image row's stored path starts with prefix (database: one not bound yet, at start-up)."""
    db = database if database is not None else bound()
    with db.read_session() as s:
        return s.scalar(select(Image.id).where(Image.path.startswith(prefix, autoescape=True)).limit(1)) is not None


def real_images(dataset_id: int, split: str | None = None, class_name: str | None = None,
                limit: int | None = None) -> list[ImageRow]:
    """Real cells of a dataset, optionally of one split and class, in id order."""
    query = select(Image).where(Image.dataset_id == dataset_id, Image.origin == "real")
    if split is not None:
        query = query.where(Image.split == split)
    if class_name is not None:
        query = query.where(Image.class_name == class_name)
    query = query.order_by(Image.id).limit(limit)
    with read_session() as s:
        return [_row(im) for im in s.scalars(query)]


def images_by_ids(ids: Iterable[int]) -> list[ImageRow]:
    """Image rows for the given ids, in the order given (unknown ids are dropped)."""
    wanted = list(ids)
    with read_session() as s:
        found = {im.id: _row(im) for im in s.scalars(select(Image).where(Image.id.in_(wanted)))}
    return [found[i] for i in wanted if i in found]


def candidates(dataset_id: int, gan_run_id: int | None = None, class_name: str | None = None) -> list[ImageRow]:
    """Synthetic candidates of a dataset, optionally from one GAN run or of one intended class."""
    query = select(Image).where(Image.dataset_id == dataset_id, Image.origin == "synthetic")
    if gan_run_id is not None:
        query = query.where(Image.gan_run_id == gan_run_id)
    if class_name is not None:
        query = query.where(Image.class_name == class_name)
    with read_session() as s:
        return [_row(im) for im in s.scalars(query.order_by(Image.id))]


def delete_dataset(dataset_id: int) -> None:
    """Remove a dataset that has no review decisions (decisions are never deleted, so this refuses then)."""
    from db.models import Decision

    with write_session() as s:
        decided = s.scalar(select(func.count()).select_from(Decision).join(Image, Image.id == Decision.image_id)
                           .where(Image.dataset_id == dataset_id))
        if decided:
            raise ValueError(f"dataset has {decided} review decisions; they are kept forever, so it cannot be deleted")
        ds = s.get(Dataset, dataset_id)
        if ds is not None:
            s.delete(ds)


def _checked(row: dict[str, Any]) -> dict[str, Any]:
    validate.text(row.get("class_name"), "the class name", validate.CLASS_NAME_MAX, required=True)
    validate.text(row.get("judge_top_class"), "the judged class", validate.CLASS_NAME_MAX)
    for key in ("judge_prob", "nearest_real_distance"):
        validate.finite(row.get(key), key.replace("_", " "))
    return row


def _row(im: Image) -> ImageRow:
    return ImageRow(im.id, im.class_name, im.split, im.origin, im.path, im.sha256)


def max_candidate_seed(gan_run_id: int) -> int | None:
    """The largest sampling seed used so far for candidates of a GAN run."""
    with read_session() as s:
        return s.scalar(select(func.max(Image.seed)).where(Image.gan_run_id == gan_run_id))
