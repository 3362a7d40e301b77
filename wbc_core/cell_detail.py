"""Detail view of one review cell: the real-only judge's class probabilities and its nearest real train cells.

Read-only and cheap: it uses a judge only when one is already cached under WBC_HOME/cache/judges/ (trained when
candidates are scored on the Generate page) and never trains one inside a page request. The judge and its
cached train features are loaded once per process; each (image, k) answer is kept in memory too.

Blind realism test: a real val cell is looked up exactly like a candidate (same judge, same size, same answer
shape), so the detail view never tells a blind cell apart from a generated one.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is loaded on the first detail request, not when the Review page imports this
    import torch

from db import datasets as ds_db
from db import decisions as decisions_db
from wbc_core.context import BoundedCache, current
from wbc_core.provenance import JudgeKey

__all__ = ["candidate_detail", "cached_judge", "probabilities_figure"]


@dataclass(frozen=True)
class CachedJudge:
    """A judge loaded from its cache folder with its features of the real train cells."""

    judge: Any  # LoadedClassifier, eval mode
    class_names: list[str]
    train_ids: torch.Tensor  # int64 [N] image ids, in the order of train_features
    train_features: torch.Tensor  # float [N, D]
    image_size: int
    token: tuple[str, int, int]  # (judge folder, model mtime, features mtime): changes when the cache does


class _Judges:
    """Judges loaded in this context, by token, and their lock."""

    def __init__(self) -> None:
        self.by_token: dict[tuple[str, int, int], CachedJudge] = {}
        self.lock = threading.Lock()


def _judges() -> _Judges:
    return current().caches.get("cell_detail.judges", _Judges)


def _answers() -> BoundedCache:
    return current().caches.get("cell_detail.answers", lambda: BoundedCache(4096))


def _judge_dir(dataset_id: int) -> tuple[Path, int] | None:
    """The dataset's cached judge folder (complete: model and features) and its image size, or None.

    The folder is chosen per dataset, never per cell: the dataset's own image size when that judge exists,
    else the newest cached size (e.g. a GAN run at another size). Real and generated cells so get the same judge.
    """
    from wbc_core.quality.judge import app_quality_config

    info = ds_db.get_dataset(dataset_id)
    root = current().paths.cache / "judges"
    judge = app_quality_config().key()
    found: list[tuple[int, float, Path]] = []
    for folder in root.iterdir() if root.is_dir() else []:
        key = JudgeKey.parse(folder.name, info.split_hash, judge)  # the folder dataset_reference() writes
        if key is not None and key.dataset_id == info.id and (folder / "model.pt").is_file() \
                and (folder / "reference.pt").is_file():
            found.append((key.size, (folder / "reference.pt").stat().st_mtime, folder))
    if not found:
        return None
    own = [f for f in found if f[0] == info.image_size]
    size, _, folder = own[0] if own else max(found, key=lambda f: f[1])
    return folder, size


def cached_judge(dataset_id: int) -> CachedJudge | None:
    """The dataset's judge and train features if they are cached on disk (loaded once per process), else None."""
    from wbc_core.classifier import load_classifier

    found = _judge_dir(dataset_id)
    if found is None:
        return None
    folder, size = found
    model_path, feats_path = folder / "model.pt", folder / "reference.pt"
    try:
        token = (str(folder), model_path.stat().st_mtime_ns, feats_path.stat().st_mtime_ns)
    except OSError:  # removed in between
        return None
    judges = _judges()
    with judges.lock:
        if token in judges.by_token:
            return judges.by_token[token]
        import torch

        try:
            judge = load_classifier(model_path)
            blob = torch.load(feats_path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged or half-written cache means "no scores yet", never a crash
            return None
        info = ds_db.get_dataset(dataset_id)
        if judge.class_names != list(info.class_names):
            return None
        ids, feats = blob["train_ids"].to(torch.int64), blob["train"].float()
        if bool((ids < 0).any()):
            # Features cached without ids: dataset_reference() computes them over real_images(split="train")
            # in id order, so the same query gives the ids of the rows, provided the count still matches.
            rows = ds_db.real_images(info.id, split="train")
            if len(rows) != feats.shape[0]:
                return None
            ids = torch.tensor([r.id for r in rows], dtype=torch.int64)
        entry = CachedJudge(judge, list(judge.class_names), ids, feats, size, token)
        for old in [t for t in judges.by_token if t[0] == token[0]]:  # a retrained judge replaces the old one
            del judges.by_token[old]
        judges.by_token[token] = entry
        return entry


def _detail(home: Path, image_id: int, k: int, token: tuple[str, int, int]) -> dict[str, Any] | None:
    from wbc_core.quality.judge import judge_features
    from wbc_core.quality.neighbours import pairwise_nearest
    from wbc_core.store import decode_cell

    entry = _judges().by_token.get(token)
    rows = ds_db.images_by_ids([image_id])
    if entry is None or not rows or entry.train_features.shape[0] == 0:
        return None
    import torch

    # Decoded exactly as score_candidates() decodes candidates (centre crop, resize to the judge's size).
    image = torch.from_numpy(decode_cell(Path(home) / rows[0].path, entry.image_size)).unsqueeze(0)
    # Torch's thread count is left alone: this runs inside the app server, where it is process-wide.
    feats, probs = judge_features(entry.judge, image)
    probabilities = dict(sorted(((name, float(p)) for name, p in zip(entry.class_names, probs[0].tolist(),
                                                                       strict=True)),
                                key=lambda item: -item[1]))
    kk = min(int(k), entry.train_features.shape[0])
    dist, index = pairwise_nearest(feats, entry.train_features, k=kk)
    ids = [int(entry.train_ids[i]) for i in index[0].tolist()]
    found = {r.id: r for r in ds_db.images_by_ids(ids)}
    neighbours = [{"image_id": i, "path": str(Path(home) / found[i].path), "class_name": found[i].class_name,
                   "distance": float(d)}
                  for i, d in zip(ids, dist[0].tolist(), strict=True) if i in found]
    return {"probabilities": probabilities, "neighbours": neighbours}


def candidate_detail(image_id: int, k: int = 5) -> dict | None:
    """Judge class probabilities (sorted, highest first) and the k nearest real train cells of one image.

    {"probabilities": {class: p}, "neighbours": [{"image_id", "path", "class_name", "distance"}, ...]} with
    neighbours sorted by judge-feature distance; None when the image is unknown or its dataset has no cached
    judge yet (the judge is trained when candidates are scored, never here).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    dataset_id = decisions_db.dataset_of_images([int(image_id)]).get(int(image_id))
    if dataset_id is None:
        return None
    entry = cached_judge(dataset_id)
    if entry is None:
        return None
    key = (int(image_id), int(k), entry.token)
    out = _answers().get_or_compute(key, lambda: _detail(current().home, int(image_id), int(k), entry.token))
    return copy.deepcopy(out)  # callers may edit their copy; the cached answer stays intact


def forget() -> None:
    """Drop the in-process judges and answers (tests; after a judge cache is cleared)."""
    judges = _judges()
    with judges.lock:
        judges.by_token.clear()
    _answers().discard(lambda _key: True)


def probabilities_figure(probabilities: dict[str, float]):  # noqa: ANN201 - plotly Figure, imported lazily
    """A small horizontal bar chart of class probabilities, the most likely class on top."""
    import plotly.graph_objects as go

    names = list(probabilities)[::-1]  # plotly draws the first bar at the bottom
    values = [probabilities[n] for n in names]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", text=[f"{v:.2f}" for v in values],
                           textposition="auto", marker_color="#1c83e1",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(height=40 + 24 * len(names), margin=dict(l=0, r=0, t=4, b=20),
                      xaxis=dict(range=[0, 1], title=None, fixedrange=True), yaxis=dict(fixedrange=True),
                      showlegend=False)
    return fig
