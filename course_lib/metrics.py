"""Distances between two sets of samples: FID, KID, precision/recall, Wasserstein-2, energy distance.

Every function takes torch tensors of samples or features, ``[N, D]`` (the D-dimensional features of N
images, from :mod:`course_lib.features`, or the points of a toy 2-D data set) and returns Python floats
or small dataclasses. Everything is computed in float64.

**Fréchet distance** (Fréchet 1957, "Sur la distance de deux lois de probabilité"; closed form for
Gaussians: Dowson & Landau 1982, "The Fréchet distance between multivariate normal distributions").
Between N(mu1, S1) and N(mu2, S2)::

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

With mu and S the mean and covariance of Inception-v3 features this is the FID of Heusel et al. 2017
("GANs trained by a two time-scale update rule converge to a local Nash equilibrium"). The trace of the
square root is computed without complex numbers: with R = S1^{1/2} (symmetric, from ``torch.linalg.eigh``),
S1 S2 = R (R S2) has the same eigenvalues as (R S2) R = R S2 R, which is symmetric and positive
semi-definite, so

    Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(R S2 R)).

Eigenvalues that round-off makes slightly negative are clipped to 0 (in R and in the sum). The usual code
(pytorch-fid) instead calls ``scipy.linalg.sqrtm`` on the non-symmetric product S1 S2, which can return a
matrix with small imaginary parts that it then discards. The result is clipped at 0, because round-off can
make the distance between two equal distributions -1e-12 instead of 0.

**Kernel Inception Distance** (Bińkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD GANs"):
the squared maximum mean discrepancy (MMD) with the cubic polynomial kernel

    k(x, y) = (x . y / D + 1)^3,

estimated without bias (Gretton et al. 2012, "A kernel two-sample test") from m samples x_i and m samples y_j:

    MMD^2_u = [sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2.

KID is its mean over random subsets of size m (1000 by default) of the two sets; being unbiased, it can
come out negative when the two distributions are the same.

**Improved precision and recall** (Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019, "Improved
precision and recall metric for assessing generative models"). Each real feature r_i gets a ball whose
radius rho_i is the distance to its k-th nearest neighbour among the other real features; the union of
the balls estimates the support ("manifold") of the real distribution. Then

    precision = 1/M sum_j [ exists i: ||g_j - r_i|| <= rho_i ]   (fake samples g_j that look real),

and recall is the same with the roles of the real and fake sets swapped (real samples that the fake
set covers). k = 3 as in the paper.

**Wasserstein-2 distance** between two empirical distributions with weights a_i, b_j (uniform by default):

    W_2^2 = min_{P >= 0, P 1 = a, P^T 1 = b} sum_{i, j} P_ij ||x_i - y_j||^2,

a linear program solved exactly by ``ot.emd2`` (network simplex) of the POT library (Flamary et al. 2021,
"POT: Python Optimal Transport"), an optional dependency of the course's ``eval`` extra.

**Energy distance** (Székely & Rizzo 2004, "Testing for equal distributions in high dimension"; 2013,
"Energy statistics: a class of statistics based on distances"):

    E(X, Y) = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||,

with X' an independent copy of X. E >= 0, with equality only for equal distributions; sqrt(E) is a
metric. :func:`energy_distance` returns E, the squared form, estimated without bias: the within-set means
run over pairs i != j.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .features import EVAL_EXTRA_HINT, FeatureStats, MissingExtraError

Gaussian = FeatureStats | tuple[torch.Tensor, torch.Tensor]

#: the largest cost matrix :func:`wasserstein2` builds by default (25M float64 entries = 200 MB)
MAX_COST_ENTRIES = 25_000_000


# --------------------------------------------------------------------------- input checks


def _as_samples(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` as float64 [N, D], with an error that names the argument when it is not a 2-D array of samples."""
    x = torch.as_tensor(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be samples [N, D] (one row per sample), got shape {tuple(x.shape)}; "
                         f"reshape a single set of points with {name}.reshape(len({name}), -1)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; drop or fix those samples first")
    return x.double()


def _as_pair(x: torch.Tensor, y: torch.Tensor,
             names: tuple[str, str] = ("x", "y")) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sample sets as float64 [N, D] and [M, D] on the first one's device; their D must agree."""
    x, y = _as_samples(x, names[0]), _as_samples(y, names[1])
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names[0]} has {x.shape[1]} features per sample but {names[1]} has {y.shape[1]}: "
                         "both sets must come from the same feature extractor (or the same data space)")
    return x, y.to(x.device)


# --------------------------------------------------------------------------- Fréchet distance (FID)


def _mean_and_cov(stats: Gaussian, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu [D], sigma [D, D]) in float64 from :class:`FeatureStats` or a ``(mu, sigma)`` pair."""
    mu, sigma = (stats.mu, stats.sigma) if isinstance(stats, FeatureStats) else stats
    mu, sigma = torch.as_tensor(mu).double(), torch.as_tensor(sigma).double()
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{name} must be a mean [D] and a covariance [D, D], got {tuple(mu.shape)} and "
                         f"{tuple(sigma.shape)}; FeatureStats.of(features) computes both from features [N, D]")
    return mu, sigma


def sqrtm_psd(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix [D, D], via its eigenvalues
    (negative ones, from round-off, are clipped to 0): R = V diag(sqrt(max(lambda, 0))) V^T, R R = sigma."""
    sym = (sigma + sigma.T) / 2  # [D, D], removes the asymmetry round-off leaves in a computed covariance
    lam, vecs = torch.linalg.eigh(sym)  # [D], [D, D]
    return (vecs * lam.clamp_min(0).sqrt()) @ vecs.T  # [D, D]


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """Squared Fréchet distance d^2 between the Gaussians N(mu1, S1) and N(mu2, S2) (module docstring):
    ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})), clipped at 0.

    ``a`` and ``b`` are :class:`~course_lib.features.FeatureStats` or ``(mu, sigma)`` pairs. This is the
    number reported as FID: the squared distance d^2, not d."""
    mu1, s1 = _mean_and_cov(a, "a")
    mu2, s2 = _mean_and_cov(b, "b")
    if len(mu1) != len(mu2):
        raise ValueError(f"a has {len(mu1)} features but b has {len(mu2)}: statistics of different feature "
                         "extractors cannot be compared")
    mu2, s2 = mu2.to(mu1.device), s2.to(mu1.device)
    root1 = sqrtm_psd(s1)  # [D, D] S1^{1/2}
    middle = root1 @ s2 @ root1  # [D, D] symmetric PSD, same eigenvalues as S1 S2
    lam = torch.linalg.eigvalsh((middle + middle.T) / 2)  # [D]
    trace_sqrt = lam.clamp_min(0).sqrt().sum()  # Tr((S1 S2)^{1/2})
    d2 = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * trace_sqrt
    return max(0.0, d2.item())


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [N, D] and [M, D]."""
    f1, f2 = _as_pair(f1, f2, ("f1", "f2"))
    return frechet_distance(FeatureStats.of(f1), FeatureStats.of(f2))


# --------------------------------------------------------------------------- Kernel Inception Distance


@dataclass
class KIDResult:
    """KID: the mean of the unbiased MMD^2 over ``num_subsets`` subset pairs, and its spread."""

    mean: float
    std: float  # standard deviation of the subset estimates (divides by num_subsets, as torch-fidelity does)
    subset_size: int  # m, the subset size actually used: min(requested, N, M)
    num_subsets: int

    def __str__(self) -> str:
        return f"KID {self.mean:.5f} ± {self.std:.5f} (m = {self.subset_size}, {self.num_subsets} subsets)"


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's cubic kernel k(x, y) = (x . y / D + 1)^3 for all pairs: [N, D], [M, D] -> [N, M]."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic kernel between samples x [m, D] and y [n, D] (module docstring; with
    m != n the two within-set sums are divided by m (m - 1) and n (n - 1) respectively)."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD^2 needs at least 2 samples in each set (pairs i != j), got {m} and {n}")
    k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)  # [m, m], [n, n]
    k_xy = polynomial_kernel(x, y)  # [m, n]
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return (within_x + within_y - 2 * k_xy.mean()).item()


def kid(f1: torch.Tensor, f2: torch.Tensor, subset_size: int = 1000, num_subsets: int = 100,
        seed: int = 0) -> KIDResult:
    """Kernel Inception Distance (Bińkowski et al. 2018) between feature sets [N, D] and [M, D].

    ``num_subsets`` times, draw m = min(subset_size, N, M) rows of each set without replacement (a
    ``torch.Generator`` seeded with ``seed``) and compute :func:`mmd2_unbiased`; return the mean and the
    standard deviation of those estimates."""
    f1, f2 = _as_pair(f1, f2, ("f1", "f2"))
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples, got m = min(subset_size={subset_size}, "
                         f"N={len(f1)}, M={len(f2)}) = {m}; give both sets 2 or more samples")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    gen = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(num_subsets):
        i = torch.randperm(len(f1), generator=gen)[:m].to(f1.device)  # [m] rows of f1
        j = torch.randperm(len(f2), generator=gen)[:m].to(f2.device)  # [m] rows of f2
        estimates.append(mmd2_unbiased(f1[i], f2[j]))
    values = torch.tensor(estimates, dtype=torch.float64)  # [num_subsets]
    return KIDResult(values.mean().item(), values.std(correction=0).item(), m, num_subsets)


# --------------------------------------------------------------------------- precision and recall


@dataclass
class PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019), both in [0, 1]."""

    precision: float  # fraction of fake samples inside the real manifold: are the samples realistic?
    recall: float     # fraction of real samples inside the fake manifold: does the model cover the data?
    k: int

    def __str__(self) -> str:
        return f"precision {self.precision:.3f}, recall {self.recall:.3f} (k = {self.k})"


def knn_radii(x: torch.Tensor, k: int = 3, batch_size: int = 500) -> torch.Tensor:
    """Distance from each row of x [N, D] to its k-th nearest neighbour among the *other* rows: [N].

    Every row is at distance 0 from itself, the smallest of its distances, so the k-th neighbour of the
    others is the (k + 1)-th smallest distance. Computed ``batch_size`` rows at a time."""
    if not 1 <= k < len(x):
        raise ValueError(f"the k-th nearest neighbour needs 1 <= k < N, got k = {k} with N = {len(x)} samples; "
                         "lower k or use more samples")
    radii = [torch.cdist(x[i:i + batch_size], x).topk(k + 1, dim=1, largest=False).values[:, -1]  # [B]
             for i in range(0, len(x), batch_size)]
    return torch.cat(radii)  # [N]


def fraction_in_balls(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                      batch_size: int = 500) -> float:
    """Fraction of points [M, D] that lie in at least one ball (centre [N, D], radius [N]): distance <= radius."""
    inside = [(torch.cdist(points[i:i + batch_size], centres) <= radii).any(dim=1)  # [B, N] -> [B]
              for i in range(0, len(points), batch_size)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch_size: int = 500,
                     dtype: torch.dtype = torch.float64) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` [M, D] with respect to ``real`` [N, D] (module docstring).

    Distances are computed ``batch_size`` rows at a time, so memory stays at a few ``batch_size x max(N, M)``
    matrices (200 MB each for 500 x 50,000 in float64); the work is three N x M-sized distance computations,
    a job for a GPU at N = M = 50,000 and D = 2048 (pass tensors on the GPU). Most consumer GPUs compute
    float64 32-64 times slower than float32: there, pass ``dtype=torch.float32``."""
    real, fake = _as_pair(real, fake, ("real", "fake"))
    real, fake = real.to(dtype), fake.to(dtype)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    precision = fraction_in_balls(fake, real, knn_radii(real, k, batch_size), batch_size)
    recall = fraction_in_balls(real, fake, knn_radii(fake, k, batch_size), batch_size)
    return PrecisionRecall(precision, recall, k)


# --------------------------------------------------------------------------- Wasserstein-2


def _weights(w: torch.Tensor | None, n: int, name: str) -> torch.Tensor:
    """Probability weights [n]: uniform when ``w`` is None, else ``w`` (>= 0) divided by its sum."""
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = torch.as_tensor(w).double().cpu()
    if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{name} must be {n} non-negative weights (one per sample) with a positive sum, "
                         f"got shape {tuple(w.shape)}")
    return w / w.sum()


def wasserstein2(x: torch.Tensor, y: torch.Tensor, x_weights: torch.Tensor | None = None,
                 y_weights: torch.Tensor | None = None, max_cost_entries: int = MAX_COST_ENTRIES,
                 num_iter_max: int = 10_000_000) -> float:
    """Exact W_2 between the empirical distributions of x [N, d] and y [M, d] (weights uniform, or
    ``x_weights`` [N] and ``y_weights`` [M], normalised to sum 1), solved with POT's ``ot.emd2``.

    Returns W_2 itself (the square root of the optimal transport cost). The N x M cost matrix is built in
    full; beyond ``max_cost_entries`` entries this raises instead of running for hours."""
    x, y = _as_pair(x, y)
    if len(x) * len(y) > max_cost_entries:
        raise ValueError(f"exact W2 between {len(x)} and {len(y)} points needs a {len(x)} x {len(y)} cost matrix, "
                         f"more than max_cost_entries={max_cost_entries:,}; compare random subsets instead, e.g. "
                         "x[torch.randperm(len(x))[:2000]] and the same for y (or raise max_cost_entries)")
    try:
        import ot
    except ImportError as err:
        raise MissingExtraError(f"wasserstein2 needs the POT library (import ot), which is not installed: "
                                f"{EVAL_EXTRA_HINT}") from err
    a = _weights(x_weights, len(x), "x_weights").numpy()  # [N]
    b = _weights(y_weights, len(y), "y_weights").numpy()  # [M]
    xs, ys = x.cpu().numpy(), y.cpu().numpy()
    cost_matrix = ot.dist(xs, ys, metric="sqeuclidean")  # [N, M] ||x_i - y_j||^2
    with warnings.catch_warnings():  # POT warns about a failed solve; we raise instead, below
        warnings.simplefilter("ignore", UserWarning)
        cost, log = ot.emd2(a, b, cost_matrix, numItermax=num_iter_max, log=True)
    if log["result_code"] != 1:
        raise RuntimeError(f"the exact transport solver did not finish ({log['warning']}); raise num_iter_max "
                           f"(now {num_iter_max:,}) or compare smaller random subsets of x and y")
    return math.sqrt(max(0.0, float(cost)))


# --------------------------------------------------------------------------- energy distance


def mean_distance(x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Mean Euclidean distance over all pairs: (1 / (N M)) sum_{i, j} ||x_i - y_j||, ``batch_size`` rows at a time."""
    total = sum(torch.cdist(x[i:i + batch_size], y).sum().item() for i in range(0, len(x), batch_size))
    return total / (len(x) * len(y))


def energy_distance(x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Squared energy distance E = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| between samples x [N, d] and
    y [M, d] (Székely & Rizzo; module docstring). Not its square root.

    Unbiased: the cross term averages all N M pairs, the within-set terms the pairs i != j (each set's
    zero diagonal is left out: sum_{i != j} = sum_{i, j}, divided by N (N - 1) instead of N^2). Hence it can
    be slightly negative; for two copies of the same N points it is -(2 / N) times their mean distance over
    pairs i != j."""
    x, y = _as_pair(x, y)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the energy distance needs at least 2 samples in each set (pairs i != j), got "
                         f"N = {len(x)} and M = {len(y)}")
    n, m = len(x), len(y)
    within_x = mean_distance(x, x, batch_size) * n / (n - 1)  # the N zeros of the diagonal are not pairs
    within_y = mean_distance(y, y, batch_size) * m / (m - 1)
    return 2 * mean_distance(x, y, batch_size) - within_x - within_y
