"""Sources of raw images: class-folder trees (ImageNet / ILSVRC layout, any labelled folder) and Fashion-MNIST IDX.

A source is listed once, in a deterministic order (classes = sorted folder names; files sorted by relative path),
and that listing (file references and labels) is stored with the dataset, so that nothing downstream ever pairs
data by sorting two stores independently.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np

from repa.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, fashion_mnist_paths, load_fashion_mnist
from repa.data.protocol import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm")
SPLIT_NAMES = ("train", "val", "validation", "test")
FASHION_MNIST = "fashion-mnist"


@dataclass(frozen=True)
class SourceListing:
    """What a source holds, in the order the dataset will store it.

    ``refs[i]`` is a file path relative to ``root`` (folders) or an item index (IDX); ``labels[i]`` its class index
    into ``class_names``.
    """
    kind: str                               # "folder" or "fashion-mnist"
    root: str                               # absolute path of the folder the refs are relative to
    class_names: tuple[str, ...]
    refs: tuple[str, ...]
    labels: np.ndarray                      # int64 (N,)
    split: str | None = None
    empty_classes: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()           # non-image files and stray files outside class folders
    native_size: int | None = None          # side length when every item has the same square size (IDX)
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-ready summary stored in the manifest."""
        return {"kind": self.kind, "path": self.root, "split": self.split, "num_files": len(self.refs),
                "empty_classes": list(self.empty_classes), "num_ignored_files": len(self.ignored), **self.extra}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _list_class_folders(root: str, split: str | None) -> SourceListing:
    if split is not None:
        candidate = os.path.join(root, split)
        if not os.path.isdir(candidate):
            raise FileNotFoundError(f"split folder {candidate!r} does not exist; the folder {root!r} holds "
                                    f"{sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))}")
        root = candidate
    entries = sorted(os.listdir(root))
    class_dirs = [d for d in entries if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")]
    stray = [d for d in entries if os.path.isfile(os.path.join(root, d))]
    if split is None and class_dirs and set(class_dirs) <= set(SPLIT_NAMES):
        raise DataError(f"{root!r} looks like a dataset root with splits {class_dirs}, not a folder of classes; "
                         f"pass the split (e.g. --split {class_dirs[0]}) or the split folder itself")
    if not class_dirs:
        hint = (f" It holds {sum(map(_is_image, stray))} image files directly: put them into one sub-folder per "
                f"class (for the ILSVRC val set, move each image into the folder of its synset)") if stray else ""
        raise DataError(f"no class folders in {root!r}: labels come from sub-folder names.{hint}")
    refs: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    ignored: list[str] = list(stray)
    seen: set[str] = set()          # folders already read: a symlink loop or a second link is read once
    for label, name in enumerate(class_dirs):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            if os.path.realpath(dirpath) in seen:
                dirnames[:] = []
                ignored.append(rel_dir.replace(os.sep, "/") + "/ (a folder already read: symlink loop or duplicate)")
                continue
            seen.add(os.path.realpath(dirpath))
            for fname in sorted(filenames):
                rel = os.path.join(rel_dir, fname).replace(os.sep, "/")
                (found if _is_image(fname) else ignored).append(rel)
        if not found:
            empty.append(name)
        refs.extend(sorted(found))
        labels.extend([label] * len(found))
    if not refs:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {root!r}")
    return SourceListing(kind="folder", root=root, class_names=tuple(class_dirs), refs=tuple(refs),
                         labels=np.asarray(labels, dtype=np.int64), split=split, empty_classes=tuple(empty),
                         ignored=tuple(ignored))


def _list_fashion_mnist(root: str, split: str | None) -> SourceListing:
    split = split or "train"
    image_path, label_path = fashion_mnist_paths(root, split)
    _, labels = load_fashion_mnist(root, split)
    return SourceListing(kind=FASHION_MNIST, root=root, class_names=FASHION_MNIST_CLASSES,
                         refs=tuple(str(i) for i in range(len(labels))), labels=labels, split=split, native_size=28,
                         extra={"files": [os.path.basename(image_path), os.path.basename(label_path)]})


def list_source(source: str | os.PathLike, split: str | None = None) -> SourceListing:
    """List a source.

    Args:
        source: a folder of class folders (ILSVRC ``train/`` or a val folder sorted into class folders, or any
            labelled image tree); a dataset root holding split folders together with ``split``; ``"fashion-mnist"``
            (the Debian package's IDX files) or ``"fashion-mnist:/folder/with/idx/files"``.
        split: sub-folder to use ("train", "val") for folder roots; "train" or "test" for Fashion-MNIST.
    Returns:
        SourceListing.
    Raises:
        FileNotFoundError: the source does not exist. ValueError: no class folders, no images.
    """
    source = os.fspath(source)
    if source == FASHION_MNIST or source.startswith(FASHION_MNIST + ":"):
        root = source.partition(":")[2] or FASHION_MNIST_DIR
        return _list_fashion_mnist(os.path.abspath(root), split)
    root = os.path.abspath(os.path.expanduser(source))
    if not os.path.exists(root):
        raise FileNotFoundError(f"source {source!r} does not exist (give a folder of class folders, or "
                                f"'fashion-mnist')")
    if not os.path.isdir(root):
        raise DataError(f"source {source!r} is a file; give a folder of class folders, or 'fashion-mnist'")
    if os.path.isfile(os.path.join(root, "train-images-idx3-ubyte.gz")):
        return _list_fashion_mnist(root, split)
    return _list_class_folders(root, split)


# ---- a subset of a listing (--max-items) ------------------------------------------------------------------------

SUBSET_RULE = "class-balanced: each class's first items in the source's order"


def balanced_subset(labels: np.ndarray, num_classes: int, max_items: int) -> np.ndarray:
    """Indices of ``max_items`` items spread over the classes as evenly as their sizes allow, sorted.

    Every class gets the same quota q, or all its items when it has fewer (water-filling); the r items left when
    ``max_items`` does not divide go one each to the lowest-numbered classes that still have items. A class gives its
    first items in the listing's order. No randomness: the same source gives the same subset everywhere. Balanced,
    not the first ``max_items``: a class-folder listing is sorted by class, so its first items are one class.
    """
    counts = np.bincount(labels, minlength=num_classes)
    if max_items >= len(labels):
        return np.arange(len(labels))
    quota, left = np.zeros_like(counts), int(max_items)
    while left > 0:
        open_ = np.flatnonzero(quota < counts)                  # classes with items still to give
        share = left // len(open_)
        if share == 0:
            quota[open_[:left]] += 1
            break
        add = np.minimum(counts[open_] - quota[open_], share)
        quota[open_] += add
        left -= int(add.sum())
    order = np.argsort(labels, kind="stable")                   # by class, then the listing's order
    rank = np.empty(len(labels), np.int64)
    rank[order] = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.flatnonzero(rank < quota[labels])


def select_items(listing: SourceListing, max_items: int | None) -> SourceListing:
    """``listing`` cut to ``balanced_subset`` of ``max_items`` items (unchanged when None or not smaller)."""
    if max_items is None or max_items >= len(listing.refs):
        return listing
    if max_items < 1:
        raise DataError(f"--max-items must be >= 1, got {max_items}")
    keep = balanced_subset(listing.labels, len(listing.class_names), max_items)
    extra = {**listing.extra, "max_items": int(max_items), "subset": SUBSET_RULE,
             "num_source_items": len(listing.refs)}
    return replace(listing, refs=tuple(listing.refs[i] for i in keep), labels=listing.labels[keep], extra=extra)


# ---- reading items (runs in worker processes) -------------------------------------------------------------------

_IDX_CACHE: dict[tuple[str, str], np.ndarray] = {}


def open_item(kind: str, root: str, split: str | None, ref: str):
    """Decode one item into a fully loaded PIL image.

    Raises:
        OSError / PIL.UnidentifiedImageError / ValueError for unreadable, truncated or corrupt files.
    """
    from PIL import Image

    if kind == FASHION_MNIST:
        key = (root, split or "train")
        if key not in _IDX_CACHE:
            _IDX_CACHE[key] = load_fashion_mnist(root, split or "train")[0]
        return Image.fromarray(_IDX_CACHE[key][int(ref)])  # (28, 28) uint8 -> mode L
    with Image.open(os.path.join(root, ref)) as image:
        image.load()  # decode now: truncated files raise here, not later
        return image
