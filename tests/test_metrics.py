"""Distances between sample sets (course_lib.metrics) against closed forms for Gaussians and point sets."""

import math
import sys

import pytest
import torch

from course_lib.features import FeatureStats, MissingExtraError
from course_lib.metrics import (KIDResult, energy_distance, fid_from_features, frechet_distance, kid, knn_radii,
                                mmd2_unbiased, precision_recall, wasserstein2)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_cov(d: int, seed: int) -> torch.Tensor:
    """A random full-rank covariance A A^T / d + 0.1 I [d, d]."""
    a = torch.randn(d, d, generator=gen(seed), dtype=F64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=F64)


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_diagonal_closed_form():
    """Commuting (diagonal) covariances: d^2 = ||mu1 - mu2||^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2, zeros included."""
    g = gen(0)
    mu1, mu2 = torch.randn(6, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    s1 = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0, 0.2], dtype=F64)  # one zero variance: a singular covariance
    s2 = torch.tensor([1.5, 0.1, 1.0, 2.0, 0.0, 0.2], dtype=F64)
    expected = (mu1 - mu2).square().sum() + (s1.sqrt() - s2.sqrt()).square().sum()
    assert frechet_distance((mu1, torch.diag(s1)), (mu2, torch.diag(s2))) == pytest.approx(expected.item(), rel=1e-10)


def test_frechet_full_covariances_match_scipy_sqrtm():
    """Non-commuting full covariances: the eigenvalue route equals Tr(sqrtm(S1 S2)) computed by scipy."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    d = 7
    mu1, mu2 = torch.randn(d, generator=gen(1), dtype=F64), torch.randn(d, generator=gen(2), dtype=F64)
    s1, s2 = random_cov(d, 3), random_cov(d, 4)
    assert not torch.allclose(s1 @ s2, s2 @ s1)  # the case where Tr((S1 S2)^{1/2}) != Tr(S1^{1/2} S2^{1/2})
    root = scipy_linalg.sqrtm((s1 @ s2).numpy())
    expected = ((mu1 - mu2).square().sum() + s1.trace() + s2.trace()).item() - 2 * root.trace().real
    assert frechet_distance((mu1, s1), (mu2, s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_rank_one_covariance_closed_form():
    """S1 = v v^T (rank 1): S1 S2 has the single non-zero eigenvalue v^T S2 v, so
    d^2 = ||mu1 - mu2||^2 + |v|^2 + Tr(S2) - 2 sqrt(v^T S2 v); no NaN from the zero eigenvalues."""
    d = 5
    v = torch.randn(d, generator=gen(5), dtype=F64)
    s2 = random_cov(d, 6)
    mu1, mu2 = torch.zeros(d, dtype=F64), torch.ones(d, dtype=F64)
    expected = d + v.square().sum() + s2.trace() - 2 * (v @ s2 @ v).sqrt()
    # the zero eigenvalues come out as +-1e-16 and their square roots as 1e-8: sqrt(eps) accuracy, not eps
    value = frechet_distance((mu1, torch.outer(v, v)), (mu2, s2))
    assert value == pytest.approx(expected.item(), rel=1e-7)
    assert frechet_distance((mu2, s2), (mu1, torch.outer(v, v))) == pytest.approx(expected.item(), rel=1e-7)


def test_frechet_identical_symmetric_and_rank_deficient():
    d = 6
    a = (torch.randn(d, generator=gen(7), dtype=F64), random_cov(d, 8))
    b = (torch.randn(d, generator=gen(9), dtype=F64), random_cov(d, 10))
    assert 0 <= frechet_distance(a, a) < 1e-10
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    assert frechet_distance(a, b) > 0.1
    # fewer samples than features: covariances of rank 9 in 32 dimensions, as FID on 10 images would have
    few1 = FeatureStats.of(torch.randn(10, 32, generator=gen(11)))
    few2 = FeatureStats.of(torch.randn(10, 32, generator=gen(12)) + 0.5)
    assert torch.linalg.matrix_rank(few1.sigma) == 9
    assert 0 <= frechet_distance(few1, few1) < 1e-6
    value = frechet_distance(few1, few2)
    assert math.isfinite(value) and value > 0


def test_fid_from_sampled_features_near_closed_form():
    """20,000 samples of two 8-D Gaussians: the Fréchet distance of the fitted Gaussians is near the exact one."""
    d, n = 8, 20_000
    mu1, mu2 = torch.randn(d, generator=gen(13), dtype=F64), torch.randn(d, generator=gen(14), dtype=F64)
    s1, s2 = random_cov(d, 15), random_cov(d, 16)
    l1, l2 = torch.linalg.cholesky(s1), torch.linalg.cholesky(s2)
    f1 = mu1 + torch.randn(n, d, generator=gen(17), dtype=F64) @ l1.T  # [n, d] ~ N(mu1, s1)
    f2 = mu2 + torch.randn(n, d, generator=gen(18), dtype=F64) @ l2.T
    exact = frechet_distance((mu1, s1), (mu2, s2))
    assert fid_from_features(f1, f2) == pytest.approx(exact, rel=0.03)
    assert fid_from_features(f1.float(), f2.float()) == pytest.approx(fid_from_features(f1, f2), rel=1e-5)


def test_frechet_errors_name_the_problem():
    with pytest.raises(ValueError, match="different feature"):
        frechet_distance((torch.zeros(3), torch.eye(3)), (torch.zeros(4), torch.eye(4)))
    with pytest.raises(ValueError, match=r"covariance \[D, D\]"):
        frechet_distance((torch.zeros(3), torch.eye(4)), (torch.zeros(3), torch.eye(3)))
    with pytest.raises(ValueError, match="same feature extractor"):
        fid_from_features(torch.zeros(5, 3), torch.zeros(5, 4))


# --------------------------------------------------------------------------- KID


def cubic_kernel_mean(mu1: torch.Tensor, s1: float, mu2: torch.Tensor, s2: float) -> float:
    """E (x . y / D + 1)^3 for independent x ~ N(mu1, s1^2 I_D), y ~ N(mu2, s2^2 I_D).

    With u = x . y / D: E[(u + 1)^3] = E u^3 + 3 E u^2 + 3 E u + 1, where
    E[x . y] = a := mu1 . mu2;
    E[(x . y)^2] = tr(M1 M2), M = s^2 I + mu mu^T, = s1^2 s2^2 D + s1^2 |mu2|^2 + s2^2 |mu1|^2 + a^2;
    E[(x . y)^3]: given x, x . y ~ N(m, s2^2 |x|^2) with m = x . mu2 ~ N(a, b^2), b^2 = s1^2 |mu2|^2, so
    E[(x . y)^3] = E[m^3] + 3 s2^2 E[m |x|^2] = a^3 + 3 a b^2 + 3 s2^2 (a (|mu1|^2 + s1^2 D) + 2 s1^2 a)."""
    d = len(mu1)
    a, n1, n2 = (mu1 @ mu2).item(), (mu1 @ mu1).item(), (mu2 @ mu2).item()
    e_xy = a
    e_xy2 = s1**2 * s2**2 * d + s1**2 * n2 + s2**2 * n1 + a**2
    e_xy3 = a**3 + 3 * a * s1**2 * n2 + 3 * s2**2 * (a * (n1 + s1**2 * d) + 2 * s1**2 * a)
    return e_xy3 / d**3 + 3 * e_xy2 / d**2 + 3 * e_xy / d + 1


def cubic_mmd2(mu1: torch.Tensor, s1: float, mu2: torch.Tensor, s2: float) -> float:
    """MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), x' and y' independent copies."""
    return (cubic_kernel_mean(mu1, s1, mu1, s1) + cubic_kernel_mean(mu2, s2, mu2, s2)
            - 2 * cubic_kernel_mean(mu1, s1, mu2, s2))


D_KID = 8
MU1 = torch.linspace(-0.5, 1.0, D_KID, dtype=F64)
MU2 = torch.linspace(1.0, 0.0, D_KID, dtype=F64)
S1, S2 = 1.0, 1.4


@pytest.mark.parametrize("mu_a, s_a, mu_b, s_b", [(MU1, S1, MU2, S2), (MU2, S2, MU2, S2)])
def test_cubic_kernel_closed_form_matches_monte_carlo(mu_a, s_a, mu_b, s_b):
    """The test's closed form of E k(x, y), checked against 10^6 independent pairs (within 4 standard errors)."""
    n = 1_000_000
    x = mu_a + s_a * torch.randn(n, D_KID, generator=gen(20), dtype=F64)
    y = mu_b + s_b * torch.randn(n, D_KID, generator=gen(21), dtype=F64)
    k = ((x * y).sum(1) / D_KID + 1) ** 3  # [n]
    stderr = k.std().item() / math.sqrt(n)
    assert abs(k.mean().item() - cubic_kernel_mean(mu_a, s_a, mu_b, s_b)) < 4 * stderr


def test_mmd2_unbiased_matches_pairwise_sums():
    """The vectorised estimator equals the formula written out pair by pair (m = 7, n = 5)."""
    x = torch.randn(7, 3, generator=gen(22), dtype=F64)
    y = torch.randn(5, 3, generator=gen(23), dtype=F64) + 0.3

    def k(u, v):
        return (float(u @ v) / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / (7 * 5)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_near_closed_form_mmd2():
    n = 2000
    f1 = MU1 + S1 * torch.randn(n, D_KID, generator=gen(24), dtype=F64)
    f2 = MU2 + S2 * torch.randn(n, D_KID, generator=gen(25), dtype=F64)
    result = kid(f1, f2, subset_size=500, num_subsets=10)
    assert isinstance(result, KIDResult) and (result.subset_size, result.num_subsets) == (500, 10)
    exact = cubic_mmd2(MU1, S1, MU2, S2)
    assert exact > 10 * result.std  # a distance the test can see
    # the mean over subsets varies less than a single subset's estimate, whose spread std measures
    assert abs(result.mean - exact) < 3 * result.std
    # subsets as large as the sets: every subset is the whole set, so the estimate is the full one, std 0
    full = kid(f1[:300], f2[:300], subset_size=1000, num_subsets=3)
    assert full.subset_size == 300 and full.std < 1e-12
    assert full.mean == pytest.approx(mmd2_unbiased(f1[:300], f2[:300]), rel=1e-12)


def test_kid_same_distribution_is_unbiased():
    """Two samples of one distribution: KID is about 0, on either side. Small subsets (m = 10) make a
    biased estimator (one that kept the i = j terms) obvious: it would add 2 (E k(x, x) - E k(x, x')) / m."""
    n = 2000
    f1 = MU1 + S1 * torch.randn(n, D_KID, generator=gen(26), dtype=F64)
    f2 = MU1 + S1 * torch.randn(n, D_KID, generator=gen(27), dtype=F64)
    result = kid(f1, f2, subset_size=10, num_subsets=1000, seed=3)
    bias_if_diagonal_kept = 2 * (((f1 * f1).sum(1) / D_KID + 1) ** 3).mean().item() / 10 \
        - 2 * cubic_kernel_mean(MU1, S1, MU1, S1) / 10
    assert bias_if_diagonal_kept > 1.0
    assert abs(result.mean) < 4 * result.std / math.sqrt(result.num_subsets) < bias_if_diagonal_kept / 10
    assert abs(kid(f1, f2, subset_size=500, num_subsets=5).mean) < 0.01 * cubic_mmd2(MU1, S1, MU2, S2)
    # same seed, same subsets, same number
    assert kid(f1, f2, 10, 50, seed=1).mean == kid(f1, f2, 10, 50, seed=1).mean != kid(f1, f2, 10, 50, seed=2).mean


def test_kid_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        kid(torch.randn(1, 4), torch.randn(50, 4))


# --------------------------------------------------------------------------- precision and recall


def modes_dataset(modes: torch.Tensor, per_mode: int, seed: int) -> torch.Tensor:
    """per_mode unit-variance Gaussian samples around each row of modes [K, D]: [K * per_mode, D]."""
    return modes.repeat_interleave(per_mode, 0) + torch.randn(len(modes) * per_mode, modes.shape[1],
                                                              generator=gen(seed), dtype=F64)


def test_precision_recall_of_a_set_against_itself_is_one():
    x = torch.randn(300, 5, generator=gen(30))
    pr = precision_recall(x, x, k=3, batch_size=64)
    assert (pr.precision, pr.recall, pr.k) == (1.0, 1.0, 3)
    pr32 = precision_recall(x, x, dtype=torch.float32)
    assert (pr32.precision, pr32.recall) == (1.0, 1.0)


def test_precision_recall_balls_by_hand():
    """1-D points 0, 1, 3, 7: k-th neighbours among the others give radii [1, 1, 2, 4] (k = 1) and [3, 2, 3, 6]
    (k = 2); a point exactly on a ball's surface is inside (distance <= radius)."""
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(real.double(), k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(real.double(), k=2).tolist() == [3.0, 2.0, 3.0, 6.0]
    # k = 1: balls [-1, 1], [0, 2], [1, 5], [3, 11]; 11 is on the last surface, -1.5 and 12 are outside all
    fake = torch.tensor([[-1.5], [2.0], [11.0], [12.0]])
    assert precision_recall(real, fake, k=1).precision == 0.5
    # fake balls (k = 1): radii [3.5, 3.5, 1, 1] -> [-5, 2], [-1.5, 5.5], [10, 12], [11, 13]: 7 is in none
    assert precision_recall(real, fake, k=1).recall == 0.75


@pytest.mark.parametrize("dim", [4, 16])
def test_precision_recall_mode_dropping(dim):
    """10 modes 20 apart (unit std, 200 real points each); the fake set covers only 5 of them.

    Recall halves and precision does not move, relative to a fake set from the real distribution. The
    k-NN balls of a finite set do not cover all of its distribution (a fresh sample falls in them with
    probability about 0.97 in 4-D and 0.8 in 16-D, for k = 3), so the absolute numbers are checked in 4-D."""
    modes = torch.zeros(10, dim, dtype=F64)
    modes[:, 0] = 20 * torch.arange(10)  # on a line, neighbours 20 apart
    real = modes_dataset(modes, 200, seed=31)  # [2000, dim]
    dropped = precision_recall(real, modes_dataset(modes[:5], 400, seed=32))
    full = precision_recall(real, modes_dataset(modes, 200, seed=33))
    assert abs(dropped.precision - full.precision) < 0.05
    assert 0.45 < dropped.recall / full.recall < 0.55
    if dim == 4:
        assert dropped.precision > 0.9 and 0.4 < dropped.recall < 0.6
    far = precision_recall(real, modes_dataset(modes[:5] + 1000, 40, seed=34))
    assert far.precision == 0.0 and far.recall == 0.0


def test_precision_recall_needs_more_points_than_k():
    with pytest.raises(ValueError, match="k < N"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)


# --------------------------------------------------------------------------- Wasserstein-2


def test_wasserstein2_translation_and_identity():
    """Translating a set by c moves it by exactly |c| in W2 (any coupling of equal uniform weights has
    sum_ij P_ij (x_i - x_j) . c = 0, so the cost is |c|^2 plus a non-negative term, zero for the identity)."""
    pytest.importorskip("ot", reason="POT is in the eval extra: pip install -e '.[eval]'")
    x = torch.randn(200, 3, generator=gen(40), dtype=F64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    assert wasserstein2(x, x + c) == pytest.approx(c.norm().item(), rel=1e-10)
    assert wasserstein2(x, x) < 1e-6
    assert wasserstein2(x[torch.randperm(200, generator=gen(41))], x) < 1e-6  # order does not matter


def test_wasserstein2_closed_forms():
    pytest.importorskip("ot", reason="POT is in the eval extra: pip install -e '.[eval]'")
    # two single points: the only coupling moves all the mass
    assert wasserstein2(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])) == pytest.approx(5.0)
    # in 1-D with equal counts the sorted matching is optimal: W2^2 = mean (x_(i) - y_(i))^2
    a = torch.randn(300, 1, generator=gen(42), dtype=F64)
    b = 2 * torch.randn(300, 1, generator=gen(43), dtype=F64) + 1
    sorted_w2 = (a.sort(0).values - b.sort(0).values).square().mean().sqrt().item()
    assert wasserstein2(a, b) == pytest.approx(sorted_w2, rel=1e-9)
    # weights: 3/4 of the mass at 0 stays, 1/4 at 2 moves to 0 -> W2^2 = 1/4 * 4 = 1; weights are normalised
    x, y = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0]])
    assert wasserstein2(x, y, x_weights=torch.tensor([3.0, 1.0])) == pytest.approx(1.0)


def test_wasserstein2_without_pot_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ot", None)  # `import ot` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"\.\[eval\]"):
        wasserstein2(torch.zeros(3, 2), torch.ones(3, 2))


def test_wasserstein2_refuses_huge_cost_matrices():
    with pytest.raises(ValueError, match="subsets"):
        wasserstein2(torch.zeros(100, 2), torch.zeros(100, 2), max_cost_entries=5000)


# --------------------------------------------------------------------------- energy distance


def abs_normal_mean(m: float, s: float) -> float:
    """E|Z| for Z ~ N(m, s^2): s sqrt(2/pi) exp(-m^2 / (2 s^2)) + m (1 - 2 Phi(-m / s))."""
    phi = 0.5 * (1 + math.erf(-m / s / math.sqrt(2)))
    return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * (1 - 2 * phi)


def test_energy_distance_of_a_set_with_itself():
    """Same N points twice: the cross mean keeps the N zero distances i = j, the within means do not, so
    E = 2 S / N^2 - 2 S / (N (N - 1)) = -(2 / N) * (mean distance over pairs i != j), S = sum_{i != j}."""
    x = torch.randn(200, 3, generator=gen(50), dtype=F64)
    mean_pair = torch.cdist(x, x).sum().item() / (200 * 199)
    assert energy_distance(x, x) == pytest.approx(-2 / 200 * mean_pair, rel=1e-6)


def test_energy_distance_gaussian_closed_form_1d():
    """X ~ N(0, 1), Y ~ N(mu, 1): X - Y ~ N(-mu, 2), X - X' ~ N(0, 2), so E = 2 E|N(-mu, 2)| - 2 E|N(0, 2)|.

    The "samples" are the quantiles Phi^-1((i + 1/2) / n) (a stratified sample), which makes the estimate
    accurate to O(1/n) instead of O(1/sqrt(n)), so the comparison can be tight."""
    n = 2000
    x = torch.special.ndtri((torch.arange(n, dtype=F64) + 0.5) / n)[:, None]  # [n, 1]
    values = []
    for mu in (0.5, 1.0, 2.0):
        exact = 2 * abs_normal_mean(-mu, math.sqrt(2)) - 2 * abs_normal_mean(0.0, math.sqrt(2))
        values.append(energy_distance(x, x + mu, batch_size=700))
        assert values[-1] == pytest.approx(exact, abs=3e-3)
    assert values[0] < values[1] < values[2]
    # random samples: about 0 for one distribution, symmetric in its arguments
    a = torch.randn(n, 2, generator=gen(51), dtype=F64)
    b = torch.randn(n, 2, generator=gen(52), dtype=F64)
    assert abs(energy_distance(a, b)) < 0.01
    assert energy_distance(a, b + 1) == pytest.approx(energy_distance(b + 1, a), rel=1e-10)


def test_energy_distance_against_scipy_v_statistic():
    """scipy returns sqrt of the V-statistic (within means over all N^2 pairs, i = j included); ours differs
    from it by exactly the within-set means divided by N and M."""
    scipy_stats = pytest.importorskip("scipy.stats")
    x = torch.randn(300, generator=gen(53), dtype=F64)
    y = 1.5 * torch.randn(200, generator=gen(54), dtype=F64) + 0.7
    v_stat = scipy_stats.energy_distance(x.numpy(), y.numpy()) ** 2
    within_x = (x[:, None] - x[None]).abs().sum().item() / (300 * 299)
    within_y = (y[:, None] - y[None]).abs().sum().item() / (200 * 199)
    ours = energy_distance(x[:, None], y[:, None])
    assert ours == pytest.approx(v_stat - within_x / 300 - within_y / 200, rel=1e-9)
