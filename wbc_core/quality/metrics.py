"""Distribution metrics on feature vectors: Fréchet distance, density/coverage, precision/recall, data copying."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from wbc_core.quality.neighbours import pairwise_nearest


def _check(*feats: torch.Tensor) -> None:
    dims = {f.shape[1] for f in feats if f.ndim == 2}
    if any(f.ndim != 2 for f in feats) or len(dims) != 1:
        raise ValueError(f"need [N, D] features with one D, got {[tuple(f.shape) for f in feats]}")


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N,D] and b [M,D] (each needs >= 2 rows)."""
    from scipy import linalg

    _check(a, b)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"Fréchet distance needs >= 2 rows per set, got {a.shape[0]} and {b.shape[0]}")
    a, b = a.double().cpu().numpy(), b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    if min(a.shape[0], b.shape[0]) < a.shape[1]:  # fewer cells than dimensions (every per-class group)
        trace_root = _trace_sqrt_product_low_rank(a - mu_a, b - mu_b)
    else:
        trace_root = _trace_sqrt_product(cov_a, cov_b)
    if not np.isfinite(trace_root):  # pytorch-fid's remedy: a tiny ridge on both covariances, then scipy's sqrtm
        offset = np.eye(cov_a.shape[0]) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            trace_root = float(np.trace(linalg.sqrtm((cov_a + offset) @ (cov_b + offset)).real))
    value = np.square(mu_a - mu_b).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(max(value, 0.0))


def _trace_sqrt_product_low_rank(xa: np.ndarray, xb: np.ndarray) -> float:
    """tr sqrtm(A B) from centred rows xa [N,D], xb [M,D] with A = xa'xa/(N-1), B = xb'xb/(M-1): the non-zero
    eigenvalues of A B are the squared singular values of xb xa' / sqrt((N-1)(M-1)), an M x N matrix, so for
    fewer cells than dimensions this costs O(N M D) instead of O(D^3)."""
    k = xb @ xa.T
    return float(np.linalg.svd(k, compute_uv=False).sum() / np.sqrt((xa.shape[0] - 1) * (xb.shape[0] - 1)))


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr sqrtm(A B) for covariances A, B: the eigenvalues of A B equal those of the symmetric PSD matrix
    sqrt(A) B sqrt(A), so two symmetric eigendecompositions replace scipy's sqrtm (its Schur iteration, 0.1-0.4 s per
    call at D = 256 on a shared 2-core box, twice per group: a hot spot of `quality --images`). Equal to the sqrtm
    formula to round-off (tests/test_libraries.py)."""
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row."""
    d, _ = pairwise_nearest(x, x, k=k, exclude_self=True)
    return d[:, -1]


def in_balls(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Bool [P, C]: point p lies within centre c's ball (closed), computed in chunks of points."""
    out = [torch.cdist(points[i:i + chunk].float(), centres.float()) <= radii.float()[None, :]
           for i in range(0, points.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0, centres.shape[0], dtype=torch.bool)


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Density and coverage of fake against real (Naeem et al. 2020), balls from real k-NN radii."""
    _check(real, fake)
    if real.shape[0] <= k or fake.shape[0] == 0:
        raise ValueError(f"need > {k} real rows and >= 1 fake row, got {real.shape[0]} and {fake.shape[0]}")
    inside = in_balls(fake, real, knn_radii(real, k))  # [fake, real]
    density = inside.sum().item() / (k * fake.shape[0])
    coverage = inside.any(dim=0).float().mean().item()
    return float(density), float(coverage)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): k-NN balls around each set's own points."""
    _check(real, fake)
    if real.shape[0] <= k or fake.shape[0] <= k:
        raise ValueError(f"need > {k} rows per set, got {real.shape[0]} real and {fake.shape[0]} fake")
    precision = in_balls(fake, real, knn_radii(real, k)).any(dim=1).float().mean().item()
    recall = in_balls(real, fake, knn_radii(fake, k)).any(dim=1).float().mean().item()
    return float(precision), float(recall)


def kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding: (centroids [k,D], assignment [N]); deterministic per seed."""
    if x.ndim != 2 or not 1 <= k <= x.shape[0]:
        raise ValueError(f"need [N,D] features and 1 <= k <= N, got {tuple(x.shape)} and k={k}")
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    centres = [x[torch.randint(x.shape[0], (1,), generator=gen)].squeeze(0)]
    nearest = torch.cdist(x, centres[0][None]).squeeze(1).square()
    for _ in range(1, k):
        # k-means++: pick the next centre with probability proportional to squared distance to the chosen ones.
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        pick = torch.multinomial(weights, 1, generator=gen)
        centres.append(x[pick].squeeze(0))
        nearest = torch.minimum(nearest, torch.cdist(x, x[pick]).squeeze(1).square())
    c = torch.stack(centres)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)  # empty cells keep their centre
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return c, assign


def mann_whitney_z(gen: torch.Tensor, test: torch.Tensor) -> float:
    """Z score of the Mann-Whitney U of gen vs test values (U counts gen > test pairs; ties count a half)."""
    m, n = gen.numel(), test.numel()
    if m == 0 or n == 0:
        raise ValueError("Mann-Whitney U needs two non-empty samples")
    diff = gen.double().flatten()[:, None] - test.double().flatten()[None, :]
    u = (diff > 0).sum().item() + 0.5 * (diff == 0).sum().item()
    return float((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))


def data_copying_ct(train: torch.Tensor, test: torch.Tensor, gen: torch.Tensor, cells: int = 10,
                    min_per_cell: int = 5, seed: int = 0) -> float:
    """Meehan et al. 2020 three-sample test statistic C_T; clearly negative (e.g. < -3) signals data copying.

    Cells are k-means partitions of the train features; in each cell with >= min_per_cell generated and test
    points, the Mann-Whitney Z compares gen vs test distances to the nearest train point, and C_T is the
    test-mass-weighted mean of those Z scores. Returns nan when no cell has enough points.
    """
    _check(train, test, gen)
    cells = max(1, min(cells, train.shape[0]))
    centres, _ = kmeans(train, cells, seed=seed)
    d_test = pairwise_nearest(test, train, k=1)[0][:, 0]
    d_gen = pairwise_nearest(gen, train, k=1)[0][:, 0]
    cell_test = torch.cdist(test.float(), centres).argmin(1)
    cell_gen = torch.cdist(gen.float(), centres).argmin(1)
    total, weight = 0.0, 0.0
    for c in range(cells):
        t, g = d_test[cell_test == c], d_gen[cell_gen == c]
        if t.numel() < min_per_cell or g.numel() < min_per_cell:
            continue  # the paper's Pi_tau: cells with too few generated (or test) points are left out
        share = t.numel() / test.shape[0]
        total += share * mann_whitney_z(g, t)
        weight += share
    return total / weight if weight else float("nan")
