"""Batched learning-rate-grid linear probes."""
import numpy as np
import pytest
import torch

from repa.analysis import fit_linear_probes, linear_probe
from repa.analysis.probe import split_indices


def clusters(n=600, d=24, classes=6, spread=1.0, seed=0):
    """Linearly separable data: well-separated Gaussian clusters, plus nuisance dimensions."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=gen) * 5
    y = torch.randint(0, classes, (n,), generator=gen)
    return centres[y] + spread * torch.randn(n, d, generator=gen), y


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_separable_data_is_probed_near_perfectly(optimizer):
    x, y = clusters()
    result = linear_probe(x, y, epochs=20, optimizer=optimizer)
    assert result.best_accuracy >= 0.99
    assert len(result.test_accuracy) == len(result.lrs) == 6
    assert result.num_train + result.num_test == 600 and result.num_test == 120


def test_linear_labels_are_learned():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(800, 10, generator=gen) * 3 + 2           # not standardised: the probe does that
    y = (x @ torch.randn(10, 4, generator=gen)).argmax(dim=1)
    assert linear_probe(x, y, epochs=60, batch_size=None).best_accuracy > 0.9


def test_random_labels_stay_near_chance():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(800, 16, generator=gen), torch.randint(0, 4, (800,), generator=gen)
    assert linear_probe(x, y, epochs=20).best_accuracy < 0.4


def test_deterministic_and_grid_slices_are_independent():
    x, y = clusters(n=300, spread=6.0, seed=3)                 # overlapping clusters: accuracies well below 1
    first = linear_probe(x, y, epochs=5, batch_size=32, seed=4)
    assert first == linear_probe(x, y, epochs=5, batch_size=32, seed=4)
    assert first.best_accuracy < 0.95
    # A slice trained inside the grid gives what it gives trained alone.
    alone = linear_probe(x, y, epochs=5, batch_size=32, seed=4, lrs=(first.lrs[2],))
    assert alone.test_accuracy[0] == first.test_accuracy[2]
    assert alone.train_accuracy[0] == first.train_accuracy[2]


def test_explicit_split_and_numpy_input():
    x, y = clusters(n=200)
    result = fit_linear_probes(x[:150].numpy(), y[:150].numpy(), x[150:].numpy(), y[150:].numpy(), epochs=10,
                               batch_size=None, num_classes=8)
    assert result.num_classes == 8 and result.best_accuracy >= 0.98


def test_split_is_seeded_partition():
    train, test = split_indices(50, 0.2, seed=0)
    assert len(test) == 10 and sorted(np.concatenate([train, test]).tolist()) == list(range(50))
    assert np.array_equal(test, split_indices(50, 0.2, seed=0)[1])
    assert not np.array_equal(test, split_indices(50, 0.2, seed=1)[1])


def test_errors():
    x, y = clusters(n=40)
    with pytest.raises(ValueError, match="optimizer"):
        linear_probe(x, y, optimizer="lbfgs")
    with pytest.raises(ValueError, match="differ in N"):
        fit_linear_probes(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="expected features"):
        linear_probe(x, y[:-1])
    with pytest.raises(ValueError, match="test_fraction"):
        linear_probe(x, y, test_fraction=1.0)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear_probes(x, y, x, y, num_classes=2)
    with pytest.raises(ValueError, match="positive"):
        linear_probe(x, y, lrs=(0.1, -1.0))
