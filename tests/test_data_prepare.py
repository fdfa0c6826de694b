"""``repa prepare``: broken inputs, verification, resume after an interruption, ranks, disk full, Fashion-MNIST."""
import os
import threading

import numpy as np
import pytest
from PIL import Image

from repa.data import DataError, open_dataset
from repa.data.idx import FASHION_MNIST_DIR, load_fashion_mnist
from repa.data.prepare import prepare_dataset
from repa.data.transforms import adm_center_crop
from repa.data.verify import verify_dataset


def make_tree(root, rng=None, per_class=5):
    """A small labelled tree with every kind of problem the preparation must report."""
    rng = rng or np.random.default_rng(0)
    for cls in ("cat", "dog"):
        os.makedirs(root / cls)
        for i in range(per_class):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.jpg")
    os.makedirs(root / "empty")
    pixels = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("CMYK").save(root / "dog" / "cmyk.jpg")
    Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(root / "dog" / "rgba.png")
    Image.fromarray(pixels[..., 0]).save(root / "dog" / "grey.png")
    Image.fromarray(pixels[:20]).save(root / "dog" / "small.png")              # 60x20: smaller than a 32 crop
    jpeg = (root / "cat" / "0.jpg").read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "cat" / "garbage.png").write_bytes(b"\x89PNG not really")
    return root


def read_all_files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_broken_tree_is_prepared_reported_and_verified(tmp_path, caplog):
    src = make_tree(tmp_path / "src")
    out = prepare_dataset(src, tmp_path / "ds", resolution=32, small="skip", chunk_size=4, num_workers=0,
                          progress=False)
    ds = open_dataset(out)
    assert ds.class_names == ["cat", "dog", "empty"] and ds.num_classes == 3
    assert len(ds) == 5 + 5 + 3                       # small, truncated and garbage skipped; converted ones kept
    assert ds.labels.tolist() == [0] * 5 + [1] * 8
    assert ds.resolution == 32 and ds.channels == 3 and not ds.has_latents
    skipped = dict(line.split("\t") for line in (tmp_path / "ds" / "skipped.txt").read_text().splitlines())
    assert set(skipped) == {"cat/truncated.jpg", "cat/garbage.png", "dog/small.png"}
    assert "truncated" in skipped["cat/truncated.jpg"] and "smaller than the crop" in skipped["dog/small.png"]
    warnings = (tmp_path / "ds" / "warnings.txt").read_text()
    assert "dog/cmyk.jpg\tCMYK->RGB" in warnings and "dog/rgba.png\tRGBA->RGB: alpha dropped" in warnings
    assert "dog/grey.png\tL->RGB" in warnings
    assert ds.manifest["report"]["empty_classes"] == ["empty"] and ds.manifest["report"]["num_skipped"] == 3
    assert "skipped 3 file(s)" in caplog.text
    # item i is the ADM crop of the file on line i of files.txt, with the label of its folder
    refs = (tmp_path / "ds" / "files.txt").read_text().splitlines()
    batch = ds.get_batch(np.array([7, 0, 12]))
    for j, i in enumerate([7, 0, 12]):
        expected = adm_center_crop(Image.open(src / refs[i]).convert("RGB"), 32).transpose(2, 0, 1)
        assert np.array_equal(batch["image"][j], expected)
        assert batch["label"][j] == ["cat", "dog"].index(refs[i].split("/")[0])
    assert verify_dataset(out) == []
    # damage one shard: verify names it
    shard = tmp_path / "ds" / "image" / "000001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_dataset(out)
    assert len(problems) == 1 and "image/000001.npy" in problems[0] and "sha256" in problems[0]
    os.remove(tmp_path / "ds" / "label" / "000002.npy")
    assert any("label/000002.npy: missing" in p for p in verify_dataset(out, check_hashes=False))


def test_small_images_are_upscaled_by_default_like_adm(tmp_path):
    src = make_tree(tmp_path / "src")
    ds = open_dataset(prepare_dataset(src, tmp_path / "ds", resolution=32, num_workers=0, progress=False))
    assert len(ds) == 14 and ds.manifest["report"]["num_upscaled"] == 1
    assert "dog/small.png\tupscaled" in (tmp_path / "ds" / "warnings.txt").read_text()


def test_resume_after_interruption_is_byte_identical(tmp_path):
    src = make_tree(tmp_path / "src")
    kwargs = dict(resolution=32, chunk_size=3, hflip=True, progress=False)
    prepare_dataset(src, tmp_path / "full", num_workers=0, **kwargs)
    with pytest.raises(RuntimeError, match="injected failure"):
        prepare_dataset(src, tmp_path / "cut", num_workers=0, _fail_after_chunks=2, **kwargs)
    assert not (tmp_path / "cut" / "manifest.json").exists()
    with pytest.raises(DataError, match="unfinished preparation"):
        open_dataset(tmp_path / "cut")
    with pytest.raises(DataError, match="other settings"):
        prepare_dataset(src, tmp_path / "cut", num_workers=0, **{**kwargs, "resolution": 16})
    prepare_dataset(src, tmp_path / "cut", num_workers=2, **kwargs)      # resumes, with worker processes now
    assert read_all_files(tmp_path / "cut") == read_all_files(tmp_path / "full")
    ds = open_dataset(tmp_path / "full")
    n = len(ds) // 2
    first = ds.get_batch(np.arange(3))
    assert len(ds) == 28 and n == 14
    # shard k holds its chunk's images then their flips; files.txt says which is which
    refs = (tmp_path / "full" / "files.txt").read_text().splitlines()
    assert refs[3:6] == [r + "#hflip" for r in refs[:3]]
    assert np.array_equal(ds.get_batch(np.arange(3, 6))["image"], first["image"][..., ::-1])


def test_ranks_split_chunks_and_rank0_writes_the_manifest(tmp_path):
    src = make_tree(tmp_path / "src")
    prepare_dataset(src, tmp_path / "one", resolution=32, chunk_size=3, num_workers=0, progress=False)
    errors = []

    def rank1():
        try:
            prepare_dataset(src, tmp_path / "two", resolution=32, chunk_size=3, num_workers=0, progress=False,
                            rank=1, world_size=2)
        except Exception as exc:  # surfaced in the main thread
            errors.append(exc)
    thread = threading.Thread(target=rank1)
    thread.start()
    prepare_dataset(src, tmp_path / "two", resolution=32, chunk_size=3, num_workers=0, progress=False,
                    rank=0, world_size=2)
    thread.join()
    assert not errors
    assert read_all_files(tmp_path / "two") == read_all_files(tmp_path / "one")


def test_output_folder_errors(tmp_path):
    src = make_tree(tmp_path / "src")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        prepare_dataset(src, foreign, resolution=32, num_workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_dataset(tmp_path / "missing", tmp_path / "x", num_workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "x")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_reported(tmp_path):
    # /dev/full fails every write with ENOSPC, as a full file system does: route the first shard there
    src = make_tree(tmp_path / "src")
    out = tmp_path / "ds"
    (out / ".progress").mkdir(parents=True)
    (out / "image").mkdir()
    os.symlink("/dev/full", out / "image" / "000000.npy.tmp")
    with pytest.raises(DataError, match="disk full while writing .*image/000000.npy"):
        prepare_dataset(src, out, resolution=32, num_workers=0, progress=False)
    assert not (out / "manifest.json").exists()


@pytest.mark.skipif(not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_is_prepared_natively(tmp_path):
    out = prepare_dataset("fashion-mnist", tmp_path / "fm", split="test", num_workers=2, progress=False)
    ds = open_dataset(out)
    images, labels = load_fashion_mnist(split="test")
    assert len(ds) == 10000 and ds.resolution == 28 and ds.channels == 1 and ds.num_classes == 10
    assert ds.class_names[0] == "T-shirt/top" and np.bincount(ds.labels).tolist() == [1000] * 10
    idx = np.array([9999, 0, 4321])
    batch = ds.get_batch(idx)
    assert np.array_equal(batch["image"][:, 0], images[idx]) and np.array_equal(batch["label"], labels[idx])
    assert verify_dataset(out, check_hashes=False) == []


def test_cli_prepare_and_verify(tmp_path, capsys):
    from repa.cli import main
    src = make_tree(tmp_path / "src")
    out = str(tmp_path / "ds")
    assert main(["prepare", str(src), out, "--resolution", "16", "--workers", "0", "--quiet"]) == 0
    assert "prepared 14 items (3x16x16, 3 classes)" in capsys.readouterr().out
    assert main(["prepare", "--verify", out]) == 0
    assert main(["prepare", str(src), out, "--resolution", "24", "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["prepare", out]) == 2
    assert "only one path" in capsys.readouterr().err
    os.remove(os.path.join(out, "files.txt"))
    assert main(["prepare", "--verify", out]) == 1
    assert "files.txt: missing" in capsys.readouterr().out
