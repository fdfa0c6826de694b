"""Sources and transforms: IDX parsing (real Fashion-MNIST files), folder listing, the ADM centre crop."""
import gzip
import os
import struct

import numpy as np
import pytest
from PIL import Image

from repa.data.idx import FASHION_MNIST_DIR, load_fashion_mnist, parse_idx, read_idx
from repa.data.sources import list_source
from repa.data.transforms import adm_center_crop, convert_mode, transform_image

HAVE_FMNIST = os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))


# ---- IDX -----------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
@pytest.mark.parametrize("split,count", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_idx_counts_and_balanced_labels(split, count):
    images, labels = load_fashion_mnist(split=split)
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (count,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [count // 10] * 10
    assert 60 < images.mean() < 90 and images.max() == 255   # real pictures, not zeros


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_parse_idx_big_endian_types_and_errors(tmp_path):
    ints = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    assert np.array_equal(parse_idx(_idx_bytes(ints, 0x0C)), ints)
    floats = np.linspace(0, 1, 5, dtype=np.float32)
    path = tmp_path / "x.idx.gz"
    path.write_bytes(gzip.compress(_idx_bytes(floats, 0x0D)))
    assert np.array_equal(read_idx(path), floats)
    data = _idx_bytes(np.zeros((2, 3), np.uint8), 0x08)
    with pytest.raises(ValueError, match="truncated"):
        parse_idx(data[:-1], "cut")
    with pytest.raises(ValueError, match="not an IDX"):
        parse_idx(b"\x01" + data[1:])
    with pytest.raises(ValueError, match="type code"):
        parse_idx(bytes([0, 0, 0x42, 1, 0, 0, 0, 0]))
    (tmp_path / "cut.gz").write_bytes(gzip.compress(data)[:-8])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "cut.gz")


def test_missing_fashion_mnist_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        list_source(f"fashion-mnist:{tmp_path}")


# ---- ADM centre crop ---------------------------------------------------------------------------------------------

def _reference_crop(image: Image.Image, size: int) -> np.ndarray:
    """The ADM definition, written independently: box-halve, bicubic to short side == size, crop with PIL."""
    w, h = image.size
    while w >= 2 * size and h >= 2 * size:
        w, h = w // 2, h // 2
        image = image.resize((w, h), Image.BOX)
    # the definition rounds with Python's round(), i.e. halves to even (np.rint does the same)
    if w <= h:
        new = (size, int(np.rint(h * (size / w))))
    else:
        new = (int(np.rint(w * (size / h))), size)
    image = image.resize(new, Image.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.array(image.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("w,h,size", [(1001, 517, 256), (517, 1001, 256), (333, 257, 256), (97, 61, 32),
                                      (63, 63, 32), (300, 129, 33), (20, 31, 32), (1025, 1023, 256),
                                      (46, 44, 33)])   # 46 * 33/44 = 34.5 exactly: rounds to 34
def test_adm_center_crop_matches_definition(w, h, size):
    rng = np.random.default_rng(w * h)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = adm_center_crop(image, size)
    assert out.shape == (size, size, 3)
    assert np.array_equal(out, _reference_crop(image, size))


def test_box_halving_is_a_2x2_mean():
    # what the BOX filter does on an exact factor 2: the mean of each 2x2 block (checks the filter we rely on)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    halved = np.asarray(Image.fromarray(arr).resize((40, 32), Image.BOX)).astype(int)
    block = arr.reshape(32, 2, 40, 2).astype(float).mean(axis=(1, 3))
    assert np.abs(halved - block).max() <= 1.0      # PIL resamples in fixed point: within one grey level


def test_center_crop_keeps_the_middle():
    arr = np.zeros((40, 100, 3), np.uint8)
    arr[:, 30:70] = 255                                     # a centred white band, 40 px wide
    out = adm_center_crop(Image.fromarray(arr), 40)         # no resize needed: short side is 40
    assert (out == 255).all()


def test_mode_conversions_are_reported():
    rgb = Image.new("RGB", (8, 8))
    assert convert_mode(rgb, 3)[1] is None
    for mode, note in [("CMYK", "CMYK->RGB"), ("RGBA", "RGBA->RGB: alpha dropped"), ("L", "L->RGB"),
                       ("LA", "LA->RGB: alpha dropped")]:
        converted, got = convert_mode(rgb.convert(mode), 3)
        assert converted.mode == "RGB" and got == note
    assert convert_mode(rgb, 1)[1] == "RGB->L"
    arr, notes = transform_image(Image.new("RGB", (10, 12)), resolution=16, channels=3, small="skip")
    assert arr is None and "smaller than the crop" in notes[0]
    arr, notes = transform_image(Image.new("RGB", (10, 12)), resolution=16, channels=3, small="upscale")
    assert arr.shape == (3, 16, 16) and notes[0].startswith("upscaled")


# ---- folder listing ----------------------------------------------------------------------------------------------

def _touch_image(path, size=(8, 8)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size).save(path)


def test_folder_listing_order_labels_and_errors(tmp_path):
    root = tmp_path / "train"
    for rel in ["n02/b.JPEG", "n02/a.png", "n01/sub/z.jpg", "n01/c.jpg", "n03/readme.txt"]:
        if rel.endswith(".txt"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("x")
        else:
            _touch_image(str(root / rel))
    listing = list_source(root)
    assert listing.class_names == ("n01", "n02", "n03")
    assert listing.refs == ("n01/c.jpg", "n01/sub/z.jpg", "n02/a.png", "n02/b.JPEG")
    assert listing.labels.tolist() == [0, 0, 1, 1]
    assert listing.empty_classes == ("n03",) and listing.ignored == ("n03/readme.txt",)
    (tmp_path / "val" / "n01").mkdir(parents=True)
    with pytest.raises(ValueError, match="--split"):
        list_source(tmp_path)
    assert list_source(tmp_path, split="train").refs == listing.refs
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_source(tmp_path / "nope")
    flat = tmp_path / "flat"
    _touch_image(str(flat / "x.jpg"))
    with pytest.raises(ValueError, match="no class folders"):
        list_source(flat)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        list_source(tmp_path / "empty")
