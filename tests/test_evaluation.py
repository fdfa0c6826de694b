"""Evaluation maths and file handling: Frechet distance, streaming statistics, precision/recall, ADM .npz files.

Every number is checked against an independent reference (scipy's sqrtm of the symmetric form, numpy.cov, a naive
nearest-neighbour loop). The Inception network itself is tested in test_evaluation_inception.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from repa.evaluation import FeatureStats, NpzFormatError, frechet_distance, open_reference, open_samples
from repa.evaluation.fid import load_stats, save_stats
from repa.evaluation.prdc import manifold_radii, precision_recall


def _random_gaussian(rng, dim, n=None):
    x = rng.normal(size=(n or 3 * dim, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _reference_fd(mu1, s1, mu2, s2):
    """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2: the symmetric form, independent of ADM's."""
    root = scipy.linalg.sqrtm(s1).real
    inner = scipy.linalg.sqrtm(root @ s2 @ root).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(inner))


# ---- Frechet distance ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [1, 8, 64])
def test_frechet_distance_matches_scipy_reference(dim):
    rng = np.random.default_rng(dim)
    (mu1, s1), (mu2, s2) = _random_gaussian(rng, dim), _random_gaussian(rng, dim)
    expected = _reference_fd(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, sigma = _random_gaussian(np.random.default_rng(0), 32)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, 1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
    # 9 + (1 + 4) + (4 + 1) - 2 (sqrt(4) + sqrt(4)) = 11
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(11.0, rel=1e-12)


def test_frechet_distance_singular_covariances_stay_finite():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 16)), rng.normal(size=(5, 16)) + 0.5     # rank 4 covariances in 16 dims
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    d = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(d)
    assert d == pytest.approx(_reference_fd(mu1, s1 + 1e-6 * np.eye(16), mu2, s2 + 1e-6 * np.eye(16)), rel=1e-3)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---- streaming statistics ---------------------------------------------------------------------------------------

def test_feature_stats_equal_numpy_on_the_full_set():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(103, 12)) * 3 + 1000.0            # large mean: the shift keeps the covariance exact
    x[0] = x[0].astype(np.float32)                          # that row goes in as a float32 tensor
    stats = FeatureStats()
    for i, chunk in enumerate(np.array_split(x, [1, 8, 40, 41, 90])):
        stats.update(torch.from_numpy(chunk).float() if i == 0 else chunk)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.count == 103 and stats.mean.dtype == np.float64


def test_feature_stats_merge_equals_one_pass():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)) + 5
    a, b, whole = FeatureStats(), FeatureStats(), FeatureStats()
    a.update(x[:20]), b.update(x[20:]), whole.update(x)
    a.merge(b)
    np.testing.assert_allclose(a.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(a.cov, whole.cov, rtol=1e-10, atol=1e-12)


def test_feature_stats_errors():
    stats = FeatureStats()
    with pytest.raises(ValueError, match="at least 2"):
        stats.update(np.ones((1, 3))), stats.cov
    with pytest.raises(ValueError, match="dimension"):
        stats.update(np.ones((2, 4)))


def test_stats_roundtrip(tmp_path):
    mu, sigma = _random_gaussian(np.random.default_rng(0), 4)
    save_stats(tmp_path / "s.npz", mu=mu, sigma=sigma, network="x")
    loaded = load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded["mu"], mu)
    np.testing.assert_array_equal(loaded["sigma"], sigma)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")


# ---- precision / recall ----------------------------------------------------------------------------------------

def _brute_radii(x, k):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, k]                         # column 0 is the point itself


def _brute_inside(points, centres, radii):
    return np.mean([any(((p - c) ** 2).sum() <= r for c, r in zip(centres, radii)) for p in points])


@pytest.mark.parametrize("block", [7, 10_000])
def test_precision_recall_matches_brute_force(block):
    rng = np.random.default_rng(block)
    ref = rng.normal(size=(40, 5))
    smp = rng.normal(size=(33, 5)) * 1.3 + 0.4
    k = 3
    np.testing.assert_allclose(manifold_radii(ref, k, block, dtype=torch.float64).numpy(), _brute_radii(ref, k),
                               rtol=1e-9)
    precision, recall = precision_recall(ref, smp, k=k, block=block, dtype=torch.float64)
    assert precision == pytest.approx(_brute_inside(smp, ref, _brute_radii(ref, k)))
    assert recall == pytest.approx(_brute_inside(ref, smp, _brute_radii(smp, k)))
    p32, r32 = precision_recall(ref, smp, k=k, block=block)           # the default float32 path agrees here
    assert (p32, r32) == pytest.approx((precision, recall))


def test_precision_recall_extremes():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 4))
    assert precision_recall(ref, ref.copy()) == (1.0, 1.0)
    far = ref + 100.0
    assert precision_recall(ref, far) == (0.0, 0.0)


# ---- ADM .npz files ----------------------------------------------------------------------------------------------

def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_open_samples_reads_header_and_streams(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 4, 3), dtype=np.uint8)
    path = _save(tmp_path / "s.npz", arr_0=images, labels=np.arange(5))
    f = open_samples(path)
    assert (f.num, f.height, f.width) == (5, 6, 4) and "labels" in f.keys
    batches = list(f.iter_batches(2))
    assert [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images.transpose(0, 3, 1, 2))


def test_open_samples_reads_compressed_npz(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)
    np.testing.assert_array_equal(next(open_samples(tmp_path / "c.npz").iter_batches(8)),
                                  images.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("arrays, match", [
    ({"images": np.zeros((2, 4, 4, 3), np.uint8)}, "no array 'arr_0'"),
    ({"arr_0": np.zeros((2, 4, 4, 3), np.float32)}, "dtype float32.*float images"),
    ({"arr_0": np.zeros((2, 4, 4, 3), np.int64)}, "dtype int64.*integer images"),
    ({"arr_0": np.zeros((2, 3, 8, 8), np.uint8)}, "channels-first"),
    ({"arr_0": np.zeros((2, 8, 8), np.uint8)}, "greyscale"),
    ({"arr_0": np.zeros((2, 8, 8, 1), np.uint8)}, "greyscale"),
    ({"arr_0": np.zeros((0, 8, 8, 3), np.uint8)}, "no images"),
])
def test_open_samples_rejects_wrong_files(tmp_path, arrays, match):
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(NpzFormatError, match=match):
        open_samples(path)


def test_open_samples_rejects_non_npz_and_missing(tmp_path):
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(NpzFormatError, match="not a .npz"):
        open_samples(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        open_samples(tmp_path / "missing.npz")


def test_open_reference_reads_precomputed_statistics(tmp_path):
    images = np.zeros((2, 8, 8, 3), np.uint8)
    good = _save(tmp_path / "ref.npz", arr_0=images, mu=np.zeros(2048), sigma=np.eye(2048, dtype=np.float32),
                 mu_s=np.zeros(2023), sigma_s=np.eye(2023))
    ref = open_reference(good)
    assert ref.has_fid_stats and ref.has_sfid_stats and ref.stats["sigma"].dtype == np.float64
    assert not open_reference(_save(tmp_path / "plain.npz", arr_0=images)).has_fid_stats
    with pytest.raises(NpzFormatError, match="'mu' has shape"):
        open_reference(_save(tmp_path / "bad.npz", arr_0=images, mu=np.zeros(10), sigma=np.eye(10)))
    with pytest.raises(NpzFormatError, match="without"):
        open_reference(_save(tmp_path / "half.npz", arr_0=images, mu=np.zeros(2048)))
