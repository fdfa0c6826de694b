"""CKNNA, CKA and mutual k-NN against naive loop implementations of the published formulas, plus invariances."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from repa.analysis import cka, cknna, mutual_knn
from repa.analysis.metrics import l2_normalize


# ---- independent references: explicit loops over the published formulas ------------------------------------------

def naive_gram(x):
    n, d = len(x), len(x[0])
    return [[sum(x[i][c] * x[j][c] for c in range(d)) for j in range(n)] for i in range(n)]


def naive_knn(gram, k):
    """Neighbour sets by kernel value, the sample itself excluded (Huh et al. 2024)."""
    n = len(gram)
    return [set(sorted((j for j in range(n) if j != i), key=lambda j: -gram[i][j])[:k]) for i in range(n)]


def naive_hsic_unbiased(kmat, lmat):
    """Song et al. (2012), Eq. 5, with explicit sums; K~, L~ are the kernels with zeroed diagonals."""
    n = len(kmat)
    kt = [[0.0 if i == j else kmat[i][j] for j in range(n)] for i in range(n)]
    lt = [[0.0 if i == j else lmat[i][j] for j in range(n)] for i in range(n)]
    trace = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
    sum_k = sum(kt[i][j] for i in range(n) for j in range(n))
    sum_l = sum(lt[i][j] for i in range(n) for j in range(n))
    cross = sum(kt[i][j] * lt[j][m] for i in range(n) for j in range(n) for m in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def naive_cknna(a, b, k):
    """HSIC_u of the kernels restricted to mutual k-NN pairs, over the same for each kernel's own k-NN pairs."""
    kmat, lmat = naive_gram(a), naive_gram(b)
    knn_k, knn_l = naive_knn(kmat, k), naive_knn(lmat, k)
    n = len(a)

    def restrict(mat, keep):
        return [[mat[i][j] if keep(i, j) else 0.0 for j in range(n)] for i in range(n)]

    mutual = lambda i, j: j in knn_k[i] and j in knn_l[i]  # noqa: E731
    cross = naive_hsic_unbiased(restrict(kmat, mutual), restrict(lmat, mutual))
    self_k = naive_hsic_unbiased(restrict(kmat, lambda i, j: j in knn_k[i]), restrict(kmat, lambda i, j: j in knn_k[i]))
    self_l = naive_hsic_unbiased(restrict(lmat, lambda i, j: j in knn_l[i]), restrict(lmat, lambda i, j: j in knn_l[i]))
    return cross / math.sqrt(self_k * self_l)


def naive_cka_biased(a, b):
    """tr(HKH HLH) normalised, with the double centring written out element by element."""
    def centred(mat):
        n = len(mat)
        row = [sum(mat[i]) / n for i in range(n)]
        col = [sum(mat[i][j] for i in range(n)) / n for j in range(n)]
        grand = sum(row) / n
        return [[mat[i][j] - row[i] - col[j] + grand for j in range(n)] for i in range(n)]

    kc, lc = centred(naive_gram(a)), centred(naive_gram(b))
    hsic = lambda x, y: sum(x[i][j] * y[i][j] for i in range(len(x)) for j in range(len(x)))  # noqa: E731
    return hsic(kc, lc) / math.sqrt(hsic(kc, kc) * hsic(lc, lc))


def naive_mutual_knn(a, b, k):
    knn_a, knn_b = naive_knn(naive_gram(a), k), naive_knn(naive_gram(b), k)
    return sum(len(x & y) / k for x, y in zip(knn_a, knn_b)) / len(a)


# ---- fixtures ------------------------------------------------------------------------------------------------------

def correlated_pair(n=64, d1=12, d2=9, noise=0.7, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d1))
    b = a @ rng.normal(size=(d1, d2)) + noise * rng.normal(size=(n, d2))
    return a, b


# ---- agreement with the naive formulas -----------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 10])
def test_cknna_matches_naive_loops(k):
    a, b = correlated_pair(n=26, d1=5, d2=4, seed=k)
    assert cknna(a, b, topk=k) == pytest.approx(naive_cknna(a.tolist(), b.tolist(), k), rel=1e-9, abs=1e-12)


def test_cka_and_mutual_knn_match_naive_loops():
    a, b = correlated_pair(n=22, d1=5, d2=3, seed=3)
    la, lb = a.tolist(), b.tolist()
    assert cka(a, b) == pytest.approx(naive_cka_biased(la, lb), rel=1e-10)
    hsic = naive_hsic_unbiased
    ka, kb = naive_gram(la), naive_gram(lb)
    expected_unbiased = hsic(ka, kb) / math.sqrt(hsic(ka, ka) * hsic(kb, kb))
    assert cka(a, b, unbiased=True) == pytest.approx(expected_unbiased, rel=1e-9)
    assert mutual_knn(a, b, topk=4) == pytest.approx(naive_mutual_knn(la, lb, 4))


def test_cknna_with_all_neighbours_is_unbiased_cka():
    a, b = correlated_pair(n=50)
    assert cknna(a, b, topk=49) == pytest.approx(cka(a, b, unbiased=True), rel=1e-10)


# ---- properties ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 5, 10])
def test_self_alignment_is_one(k):
    a, _ = correlated_pair(n=80)
    assert cknna(a, a, topk=k) == pytest.approx(1.0, abs=1e-12)
    assert mutual_knn(a, a, topk=k) == 1.0
    assert cka(a, a) == pytest.approx(1.0, abs=1e-12)
    assert cka(a, a, unbiased=True) == pytest.approx(1.0, abs=1e-12)


METRICS = {
    "cknna": lambda a, b: cknna(a, b, topk=8),
    "cka": lambda a, b: cka(a, b),
    "cka_unbiased": lambda a, b: cka(a, b, unbiased=True),
    "mutual_knn": lambda a, b: mutual_knn(a, b, topk=8),
}


@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize("side", ["a", "b", "both"])
def test_invariant_to_rotation_and_isotropic_scaling(name, side):
    metric = METRICS[name]
    a, b = correlated_pair(n=120, seed=1)
    reference = metric(a, b)
    q_a = ortho_group.rvs(a.shape[1], random_state=1)
    q_b = ortho_group.rvs(b.shape[1], random_state=2)
    a2 = a @ q_a * 7.5 if side in ("a", "both") else a
    b2 = b @ q_b * 0.03 if side in ("b", "both") else b
    assert 0.2 < reference < 1.0
    assert metric(a2, b2) == pytest.approx(reference, abs=1e-9)


def test_independent_features_fall_toward_zero():
    gen = torch.Generator().manual_seed(0)
    small = [cknna(torch.randn(150, 16, generator=gen), torch.randn(150, 24, generator=gen)) for _ in range(3)]
    a, b = torch.randn(1500, 16, generator=gen), torch.randn(1500, 24, generator=gen)
    large = cknna(a, b)
    assert abs(large) < 0.02 and abs(large) < np.mean(np.abs(small))
    assert abs(cka(a, b, unbiased=True)) < 0.01
    assert cka(a, b) < 0.03
    assert mutual_knn(a, b) < 0.02
    # and clearly above zero when related
    a_rel, b_rel = correlated_pair(n=1500, noise=0.5)
    assert cknna(a_rel, b_rel) > 0.1 > 5 * abs(large)


def test_torch_numpy_and_float32_inputs_agree():
    a, b = correlated_pair(n=60)
    reference = cknna(a, b)
    assert cknna(torch.from_numpy(a), torch.from_numpy(b)) == reference
    assert cknna(a.astype(np.float32), b.astype(np.float32)) == pytest.approx(reference, abs=1e-5)
    assert cknna(l2_normalize(a), l2_normalize(b)) == cknna(l2_normalize(torch.from_numpy(a)), l2_normalize(b))


# ---- errors ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [cknna, mutual_knn, cka])
def test_mismatched_sample_counts(fn):
    with pytest.raises(ValueError, match="same samples"):
        fn(np.zeros((10, 3)) + np.arange(3), np.ones((11, 3)))


@pytest.mark.parametrize("fn", [cknna, mutual_knn])
@pytest.mark.parametrize("topk", [0, -1, 20, 25])
def test_topk_out_of_range(fn, topk):
    a, b = correlated_pair(n=20)
    with pytest.raises(ValueError, match="1 <= topk < N"):
        fn(a, b, topk=topk)


def test_other_bad_inputs():
    a, b = correlated_pair(n=20)
    with pytest.raises(TypeError, match="integer"):
        cknna(a, b, topk=2.5)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        cknna(a[:, 0], b)
    bad = a.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cka(bad, b)
    with pytest.raises(ValueError, match="constant"):
        cka(np.ones((20, 3)), b)
    with pytest.raises(ValueError, match="at least 4"):
        cknna(a[:3], b[:3], topk=1)
    with pytest.raises(TypeError, match="numpy"):
        cka([[1.0]], b)
