"""The library replacements of issue 17 against the hand-written code they replaced, on fixed data.

The old implementations are kept below, verbatim in substance, as the reference: each test feeds old and
new the same inputs and asserts the same outputs (or, for t-SNE, the same neighbourhood quality), so the
switch to scikit-learn, scipy and openTSNE changed no number the app reports.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from support import skip_unless_ci

from wbc_core import agreement, embedding
from wbc_core.classifier import metrics
from wbc_core.quality import metrics as qm

# -- the replaced code (reference) --------------------------------------------------------------------------


def old_confusion_matrix(t: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def old_per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, (support > 0) | (predicted > 0)


def old_macro_f1(t: np.ndarray, p: np.ndarray) -> float:
    if not t.size:
        return 0.0
    _, _, f1, present = old_per_class(old_confusion_matrix(t, p, int(max(t.max(), p.max())) + 1))
    return float(f1[present].mean()) if present.any() else 0.0


def old_accuracy(t: np.ndarray, p: np.ndarray) -> float:
    return float((t == p).mean()) if t.size else 0.0


def old_bootstrap_ci(t: np.ndarray, p: np.ndarray, metric_fn, n: int = 1000, seed: int = 0,  # noqa: ANN001
                     confidence: float = 0.95) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    values = np.empty(n, dtype=np.float64)
    for i in range(n):
        row = rng.integers(0, t.size, size=t.size)
        values[i] = metric_fn(t[row], p[row])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def old_cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    count_a = Counter(a for a, _ in pairs)
    count_b = Counter(b for _, b in pairs)
    expected = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def old_frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eig = torch.linalg.eigvals(cov_a @ cov_b).real.clamp_min(0)
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * eig.sqrt().sum()
    return float(value.clamp_min(0))


def old_tsne(features: torch.Tensor, perplexity: float = 30.0, iterations: int = 600,
             exaggeration_iterations: int = 200, early_exaggeration: float = 12.0, pca_dims: int = 50,
             seed: int = 0) -> torch.Tensor:
    """The self-written exact t-SNE (PCA init, perplexity bisection, momentum with gains) that embedding.py had."""
    x = features.detach().float().cpu()
    n = x.shape[0]
    perplexity = min(perplexity, max(1.0, (n - 1) / 3.0))
    x = x - x.mean(dim=0, keepdim=True)
    if x.shape[1] > pca_dims:
        x = x @ torch.linalg.svd(x, full_matrices=False)[2][:pca_dims].T
    d = torch.cdist(x, x).pow(2).double()
    eye = torch.eye(n, dtype=torch.bool)
    d = d / d[~eye].mean().clamp_min(1e-12)
    d_shift = d - d.masked_fill(eye, math.inf).min(dim=1, keepdim=True).values
    target = math.log(perplexity)
    beta = torch.ones(n, 1, dtype=torch.float64)
    lo, hi = torch.zeros_like(beta), torch.full_like(beta, math.inf)
    for _ in range(100):
        p = torch.exp(-d_shift * beta).masked_fill(eye, 0.0)
        s = p.sum(dim=1, keepdim=True).clamp_min(1e-300)
        entropy = torch.log(s) + beta * (d_shift * p).sum(dim=1, keepdim=True) / s
        too_flat = entropy > target
        lo, hi = torch.where(too_flat, beta, lo), torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    p = p / s
    p = ((p + p.T) / (2.0 * n)).clamp_min(1e-12).float().masked_fill(eye, 0.0)
    gen = torch.Generator().manual_seed(seed)
    init = x[:, :2]
    y = init / init[:, 0].std().clamp_min(1e-12) * 1e-4 + 1e-6 * torch.randn(n, 2, generator=gen)
    lr = max(n / early_exaggeration / 4.0, 50.0)
    update, gains = torch.zeros_like(y), torch.ones_like(y)
    for it in range(iterations):
        early = it < exaggeration_iterations
        num = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        num.fill_diagonal_(0.0)
        q = (num / num.sum()).clamp_min(1e-12)
        w = ((early_exaggeration if early else 1.0) * p - q) * num
        grad = 4.0 * (w.sum(dim=1, keepdim=True) * y - w @ y)
        gains = torch.where((grad > 0) == (update > 0), gains * 0.8, gains + 0.2).clamp_min(0.01)
        update = (0.5 if early else 0.8) * update - lr * gains * grad
        y = y + update
        y = y - y.mean(dim=0, keepdim=True)
    return y


# -- fixed data ----------------------------------------------------------------------------------------------


def _labels(seed: int, n: int, k: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < accuracy, y_true, rng.integers(0, k, n))
    return y_true, y_pred


CASES = [_labels(0, 300, 3, 0.8), _labels(1, 500, 8, 0.6), _labels(2, 40, 5, 0.3),
         (np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 3, 2])),  # a class predicted without support
         (np.array([1, 1, 1]), np.array([0, 0, 0]))]


# -- classification metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize(("y_true", "y_pred"), CASES)
def test_sklearn_metrics_equal_the_old_numpy_metrics(y_true, y_pred):
    k = int(max(y_true.max(), y_pred.max())) + 2  # one class that occurs nowhere
    names = [f"c{i}" for i in range(k)]
    report = metrics.classification_report(y_true, y_pred, k, names)
    precision, recall, f1, _ = old_per_class(old_confusion_matrix(y_true, y_pred, k))
    assert report["confusion"] == old_confusion_matrix(y_true, y_pred, k).tolist()
    assert metrics.confusion_matrix(y_true, y_pred, k).tolist() == report["confusion"]
    assert report["macro_f1"] == pytest.approx(old_macro_f1(y_true, y_pred), abs=1e-12)
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(old_macro_f1(y_true, y_pred), abs=1e-12)
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(old_accuracy(y_true, y_pred), abs=1e-12)
    assert list(report["per_class_f1"].values()) == pytest.approx(f1.tolist(), abs=1e-12)
    assert list(report["per_class_precision"].values()) == pytest.approx(precision.tolist(), abs=1e-12)
    assert list(report["per_class_recall"].values()) == pytest.approx(recall.tolist(), abs=1e-12)


@pytest.mark.parametrize(("y_true", "y_pred"), CASES[:3])
def test_vectorised_bootstrap_scores_every_resample_like_sklearn(y_true, y_pred):
    from sklearn.metrics import accuracy_score, f1_score

    k = int(max(y_true.max(), y_pred.max())) + 1
    index = metrics.resample_index(y_true.size, 25, seed=3)
    scored = metrics.bootstrap_scores(y_true, y_pred, k, index)
    for b, row in enumerate(index):
        t, p = y_true[row], y_pred[row]
        assert scored["accuracy"][b] == pytest.approx(accuracy_score(t, p), abs=1e-12)
        assert scored["macro_f1"][b] == pytest.approx(f1_score(t, p, average="macro", zero_division=0), abs=1e-12)
        per_class = f1_score(t, p, labels=range(k), average=None, zero_division=0)
        assert scored["per_class_f1"][b] == pytest.approx(per_class, abs=1e-12)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
@pytest.mark.parametrize(("y_true", "y_pred"), CASES[:3])
def test_bootstrap_ci_equals_the_old_loop_on_the_same_resamples(y_true, y_pred, metric):
    # Same seed, same generator calls: the one-matrix resampler draws exactly the old loop's resamples.
    old_fn = {"accuracy": old_accuracy, "macro_f1": old_macro_f1}[metric]
    new_fn = {"accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1}[metric]
    old = old_bootstrap_ci(y_true, y_pred, old_fn, n=200, seed=4)
    assert metrics.bootstrap_ci(y_true, y_pred, new_fn, n=200, seed=4) == pytest.approx(old, abs=1e-12)
    assert metrics.bootstrap_ci(y_true, y_pred, metric, n=200, seed=4) == pytest.approx(old, abs=1e-12)


def test_bootstrap_ci_refuses_a_metric_it_cannot_vectorise():
    y_true, y_pred = CASES[0]
    with pytest.raises(ValueError, match="accuracy or macro_f1"):
        metrics.bootstrap_ci(y_true, y_pred, lambda t, p: 0.5, n=10)


def test_paired_bootstrap_equals_the_old_paired_loop():
    y, p0 = _labels(5, 400, 4, 0.7)
    p1 = np.where(np.random.default_rng(6).random(400) < 0.2, (y + 1) % 4, y)
    got = metrics.paired_bootstrap_delta(y, p0, p1, n=300, seed=0)
    for name, fn in {"accuracy": old_accuracy, "macro_f1": old_macro_f1}.items():
        rng = np.random.default_rng(0)
        deltas = np.empty(300)
        for i in range(300):
            r = rng.integers(0, y.size, size=y.size)
            deltas[i] = fn(y[r], p1[r]) - fn(y[r], p0[r])
        assert got[name]["delta"] == pytest.approx(fn(y, p1) - fn(y, p0), abs=1e-12)
        assert got[name]["ci"] == pytest.approx(np.quantile(deltas, [0.025, 0.975]).tolist(), abs=1e-12)


# -- agreement -------------------------------------------------------------------------------------------


def _pairs(seed: int, n: int, agree: float) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    cats = ["accept", "reject", "relabel:lymphocyte", "relabel:monocyte"]
    a = rng.choice(cats, n, p=[0.5, 0.3, 0.1, 0.1])
    b = np.where(rng.random(n) < agree, a, rng.choice(cats, n))
    return list(zip(a.tolist(), b.tolist(), strict=True))


@pytest.mark.parametrize("pairs", [_pairs(0, 200, 0.7), _pairs(1, 30, 0.2), _pairs(2, 7, 0.9),
                                   [("accept", "reject"), ("reject", "accept")], [("accept", "accept")] * 5, []])
def test_cohen_kappa_from_sklearn_equals_the_old_formula(pairs):
    old = old_cohen_kappa(pairs)
    new = agreement.cohen_kappa(pairs)
    assert (new is None) == (old is None)
    if old is not None:
        assert new == pytest.approx(old, abs=1e-12)


def table_fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss (1971) on an [items, categories] count table with equal raters per item (statsmodels' formula)."""
    n_items, raters = table.shape[0], int(table.sum(1)[0])
    p_j = table.sum(0) / (n_items * raters)
    p_i = ((table * table).sum(1) - raters) / (raters * (raters - 1))
    p_bar, p_e = p_i.mean(), (p_j * p_j).sum()
    return float((p_bar - p_e) / (1 - p_e))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fleiss_kappa_equals_the_table_formula_and_statsmodels_for_equal_rater_counts(seed):
    rng = np.random.default_rng(seed)
    table = np.stack([rng.multinomial(5, rng.dirichlet(np.ones(3) * (seed + 1))) for _ in range(40)])
    items = [{f"c{j}": int(n) for j, n in enumerate(row) if n} for row in table]
    assert agreement.fleiss_kappa(items) == pytest.approx(table_fleiss_kappa(table), abs=1e-12)
    try:
        from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss  # optional: not a dependency
    except ImportError:
        return
    assert agreement.fleiss_kappa(items) == pytest.approx(sm_fleiss(table, method="fleiss"), abs=1e-12)


# -- Fréchet distance --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d", "shift"), [(200, 8, 0.0), (300, 16, 0.5), (40, 64, 1.0), (6, 32, 0.3)])
def test_frechet_distance_equals_scipy_sqrtm_and_the_old_code(n, d, shift):
    from scipy import linalg

    gen = torch.Generator().manual_seed(n + d)
    a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    b = torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.3 + shift
    new = qm.frechet_distance(a, b)
    assert new == pytest.approx(old_frechet_distance(a, b), rel=1e-6, abs=1e-6)  # singular products: round-off
    # The textbook formula with scipy's matrix square root (pytorch-fid's way, imaginary round-off dropped).
    ca, cb = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    expected = float(((a.mean(0) - b.mean(0)) ** 2).sum()) + np.trace(ca) + np.trace(cb) - 2 * np.trace(root)
    assert new == pytest.approx(expected, rel=1e-6, abs=1e-6)


# -- t-SNE -----------------------------------------------------------------------------------------------


def _neighbour_agreement(y: torch.Tensor | np.ndarray, labels: torch.Tensor) -> float:
    y = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    d = torch.cdist(y, y)
    d.fill_diagonal_(float("inf"))
    return float((labels[d.argmin(dim=1)] == labels).float().mean())


def test_tsne_library_keeps_the_neighbourhoods_the_old_tsne_kept():
    from sklearn.manifold import trustworthiness

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(150) % 5
    features = torch.randn(5, 64, generator=gen)[labels] * 3 + torch.randn(150, 64, generator=gen)
    old = old_tsne(features, iterations=300, exaggeration_iterations=100)
    new = embedding.tsne(features, embedding.TSNEConfig(iterations=300, exaggeration_iterations=100))
    assert new.shape == old.shape == (150, 2)
    assert _neighbour_agreement(new, labels) >= _neighbour_agreement(old, labels) - 0.02
    x = features.numpy()
    assert trustworthiness(x, new.numpy(), n_neighbors=10) >= trustworthiness(x, old.numpy(), n_neighbors=10) - 0.02


# -- benchmark chart ---------------------------------------------------------------------------------------


def _gain_results() -> dict:
    def gain(mean: float) -> dict:
        return {"macro_f1": {"mean": mean, "low": mean - 1.5, "high": mean + 2.0}}

    return {"regimes": {"n50": {"gains": {"1.0": {"unfiltered": gain(1.0), "curated": gain(3.5), "matched": gain(2.0)},
                                          "2.0": {"unfiltered": gain(-0.5), "curated": gain(2.5),
                                                  "matched": gain(1.0)}}},
                        "all": {"gains": {"1.0": {"unfiltered": gain(-1.0), "curated": gain(0.2),
                                                  "matched": gain(0.0)}}}}}


def test_gain_chart_is_a_plotly_figure_with_ci_error_bars():
    from bench import gain_report as gr

    fig = gr.chart_figure(_gain_results())
    assert [t.name for t in fig.data] == list(gr.ARM_COLOURS)
    curated = fig.data[1]
    assert list(curated.x) == ["n50 ×1.0", "n50 ×2.0", "all ×1.0"] and list(curated.y) == [3.5, 2.5, 0.2]
    assert list(curated.error_y.array) == [2.0, 2.0, 2.0] and list(curated.error_y.arrayminus) == [1.5, 1.5, 1.5]


def test_gain_chart_png_is_rendered_by_kaleido(tmp_path):
    import shutil

    from PIL import Image

    from bench import gain_report as gr

    if not (shutil.which("chromium") or shutil.which("google-chrome")):
        skip_unless_ci("kaleido needs a Chromium (Debian package 'chromium'); CI installs it")
    path = gr.chart(_gain_results(), tmp_path / "augmentation_gain.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 520 and im.height >= 440
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert (0x28, 0x78, 0xC8) in colours  # the curated bars were drawn


def test_umap_is_a_method_of_the_map_and_keeps_separated_clusters_apart():
    assert embedding.EMBEDDING_METHODS == ("tsne", "umap")
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(120) % 4
    features = torch.randn(4, 32, generator=gen)[labels] * 4 + torch.randn(120, 32, generator=gen)
    y = embedding.layout(features, "umap", embedding.TSNEConfig(seed=3))
    assert y.shape == (120, 2) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert _neighbour_agreement(y, labels) > 0.95
    assert torch.equal(y, embedding.layout(features, "umap", embedding.TSNEConfig(seed=3)))  # the seed fixes it
    with pytest.raises(ValueError, match="one of tsne, umap"):
        embedding.layout(features, "pca")


@pytest.mark.parametrize("method", ["tsne", "umap"])
@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_layouts_of_tiny_sets_are_finite(method, n):
    features = torch.randn(n, 8, generator=torch.Generator().manual_seed(n))
    y = embedding.layout(features, method)
    assert y.shape == (n, 2) and torch.isfinite(y).all()
