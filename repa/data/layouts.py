"""The reference's own dataset folders, read as they are: nothing is converted, copied or re-encoded.

Two layouts, each a ``repa.data.Dataset`` (``open_folder`` picks the reader; ``repa train --data.path DIR`` takes
either folder directly):

- **The reference's ImageNet folder** (sihyun-yu/REPA ``preprocessing/dataset_tools.py``: ``convert`` then
  ``encode``, read by its ``dataset.py::CustomDataset``)::

      DIR/images/00000/img00000000.png ...             uint8 RGB images (``convert``), and images/dataset.json
      DIR/vae-sd/00000/img-mean-std-00000000.npy ...   float32 (8, h, w): the SD-VAE posterior mean (channels 0-3)
                                                       and standard deviation (4-7) (``encoders.py``: d.mean, d.std)
      DIR/vae-sd/dataset.json                          {"labels": [["00000/img-mean-std-00000000.npy", 6], ...]}

  The reference pairs image i with latent i of two independently sorted listings; here an image and a latent
  pair by their index in the name (``img<N>`` and ``img-mean-std-<N>`` in the same sub-folder), and an image or a
  latent without its partner is refused. Labels come from ``vae-sd/dataset.json`` as in the reference (checked
  against ``images/dataset.json`` when it has them). ``images/`` alone (no ``vae-sd/``) is a pixel-space dataset.

- **U-ViT's MS-COCO features** (baofff/U-ViT ``scripts/extract_mscoco_feature.py`` and
  ``extract_empty_feature.py``, read by the reference's ``dataset.py::MSCOCO256Features``)::

      DIR/empty_context.npy          float32 (77, 768): the CLIP text tokens of the empty caption
      DIR/train/{i}.png              the centre-cropped image i (i = 0..N-1)
      DIR/train/{i}.npy              float32 (8, h, w): the SD-VAE moments, mean (0-3) and log-variance (4-7)
      DIR/train/{i}_{k}.npy          float32 (77, 768): the text tokens of caption k of image i (k = 0..)
      DIR/val/...                    the same

  ``DIR`` opens the ``train`` split, ``DIR/val`` (or ``DIR/train``) that split. A captioned dataset has no classes
  (``num_classes = 0``) and adds ``caption_counts``, ``get_contexts``, ``empty_context`` and ``captions``.

Checks: at open, the listing (every name parsed, counts and pairs, labels for every file) and one file of each kind
(its shape); each other file's shape when it is read (a full scan of ImageNet's 2.5 million files at every start
would cost minutes). A problem is a ``DataError`` naming the file and the fix.
"""
from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

from repa.data import store
from repa.data.protocol import DataError, Dataset
from repa.data.sources import IMAGE_EXTENSIONS

log = logging.getLogger("repa.data")

REFERENCE_IMAGES, REFERENCE_LATENTS, LABELS_FILE = "images", "vae-sd", "dataset.json"
EMPTY_CONTEXT = "empty_context.npy"
LOGVAR_RANGE = (-30.0, 20.0)          # the clamp of the log-variance before exp (U-ViT libs/autoencoder.py, REPA)


# ---- reading one file, checked -----------------------------------------------------------------------------------

def read_image(path: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """One image file -> uint8 (C, H, W); a DataError names the file when it is unreadable or not ``shape``."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            arr = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image ({' '.join(str(exc).split())}); replace the file or run the "
                        "reference's preprocessing again") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1))
    if arr.dtype != np.uint8 or (shape is not None and chw.shape != tuple(shape)):
        raise DataError(f"{path}: image of shape {chw.shape} {arr.dtype}, the folder's images are "
                        f"{tuple(shape) if shape else '(C, H, W)'} uint8; every image must have the same size and "
                        "mode: run the reference's preprocessing again for this file")
    return chw


def read_npy(path: str, shape: tuple[int, ...] | None = None, what: str = "array") -> np.ndarray:
    """One ``.npy`` file -> float32 array; a DataError names the file when it is unreadable or not ``shape``."""
    try:
        arr = np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable {what} ({' '.join(str(exc).split())}); the file is missing, truncated "
                        "or not a .npy: write it again with the reference's preprocessing") from None
    if shape is not None and arr.shape != tuple(shape):
        raise DataError(f"{path}: {what} of shape {arr.shape}, expected {tuple(shape)} like the folder's other "
                        "files; write it again with the reference's preprocessing")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: {what} of dtype {arr.dtype}, expected floating point")
    return arr.astype(np.float32, copy=False)


def _npy_shape(path: str, what: str) -> tuple[int, ...]:
    """The shape in a ``.npy`` header (the data is not read)."""
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable {what} ({' '.join(str(exc).split())}); write it again with the "
                        "reference's preprocessing") from None


def _latent_shape(path: str) -> tuple[int, int, int]:
    """The (mean/std) shape (c, h, w) of a moments file holding (2c, h, w)."""
    shape = _npy_shape(path, "latent moments")
    if len(shape) != 3 or shape[0] % 2:
        raise DataError(f"{path}: latent moments of shape {shape}, expected (2C, h, w) (mean then std or log-variance, "
                        "e.g. (8, 32, 32) for 256 px); this is not a file of the SD-VAE encoding step")
    return (shape[0] // 2, shape[1], shape[2])


def split_moments(moments: np.ndarray, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """(B, 2C, h, w) moments -> (mean, std), each (B, C, h, w) float32.

    ``"mean_std"``: the reference's ImageNet files (its ``train.py`` splits them in two and uses the second half as
    the standard deviation); ``"mean_logvar"``: U-ViT's (and the reference's ``train_t2i.py``): std =
    exp(logvar / 2) after clamping the log-variance to [-30, 20], the diagonal Gaussian of the SD-VAE.
    """
    mean, second = np.split(moments, 2, axis=1)
    if convention == "mean_logvar":
        second = np.exp(0.5 * np.clip(second, *LOGVAR_RANGE))
    elif convention != "mean_std":
        raise ValueError(f"unknown moments convention {convention!r}")
    return np.ascontiguousarray(mean, np.float32), np.ascontiguousarray(second, np.float32)


# ---- what both readers share -------------------------------------------------------------------------------------

class _FileDataset(Dataset):
    """Items stored one file each: ``_image_files[i]``, ``_latent_files[i]`` (or None), read per batch."""

    moments: str = "mean_std"

    def _setup(self, path: str, images: list[str], latents: list[str] | None, labels: np.ndarray) -> None:
        self.path, self._image_files, self._latent_files = path, images, latents
        self.labels = labels.astype(np.int64)
        if not images:
            raise DataError(f"{path}: no images found; point --data.path at the folder the reference's "
                            "preprocessing wrote")
        self._image_shape = read_image(images[0]).shape                       # (C, H, W)
        c, h, w = self._image_shape
        if h != w or c not in (1, 3):
            raise DataError(f"{images[0]}: {c}x{h}x{w} image; the datasets of repa are square, greyscale or RGB: "
                            "preprocess with a square --resolution")
        self._latent_shape = _latent_shape(latents[0]) if latents else None
        self.channels, self.resolution = c, h
        self.has_latents = latents is not None

    def __len__(self) -> int:
        return len(self._image_files)

    @property
    def keys(self) -> list[str]:
        """The keys ``get_batch`` can return."""
        return ["image", "label"] + (["latent_mean", "latent_std"] if self.has_latents else [])

    def array_shape(self, key: str) -> tuple[int, ...] | None:
        """Shape of one item of ``key`` (one of ``self.keys``); None when the folder does not hold it."""
        return {"image": self._image_shape, "label": (), "latent_mean": self._latent_shape,
                "latent_std": self._latent_shape}.get(key) if key in self.keys else None

    def get_batch(self, indices, keys=None) -> dict[str, np.ndarray]:
        """The items at ``indices`` (any order, repeats allowed): ``"image"`` uint8 (B, C, H, W), ``"label"`` int64
        (B,), ``"latent_mean"`` / ``"latent_std"`` float32 (B, 4, h, w); only ``keys`` when given. Each file's
        shape is checked as it is read."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} items: {idx.min()}..{idx.max()}")
        wanted = self.keys if keys is None else list(keys)
        unknown = [k for k in wanted if k not in self.keys]
        if unknown:
            raise KeyError(f"{unknown[0]!r} is not stored in {self.path}; available: {self.keys}")
        out: dict[str, np.ndarray] = {}
        if "image" in wanted:
            out["image"] = np.stack([read_image(self._image_files[i], self._image_shape) for i in idx.tolist()]) \
                if len(idx) else np.zeros((0, *self._image_shape), np.uint8)
        if "label" in wanted:
            out["label"] = self.labels[idx]
        if "latent_mean" in wanted or "latent_std" in wanted:
            c, h, w = self._latent_shape
            moments = np.zeros((len(idx), 2 * c, h, w), np.float32)
            for row, i in enumerate(idx.tolist()):
                moments[row] = read_npy(self._latent_files[i], (2 * c, h, w), "latent moments")
            mean, std = split_moments(moments, self.moments)
            out.update({k: v for k, v in (("latent_mean", mean), ("latent_std", std)) if k in wanted})
        return {k: out[k] for k in wanted}

    def _arrays_of(self, i: int) -> list[tuple[str, str, tuple[int, ...]]]:
        """(file, what, expected shape) of the arrays of item i."""
        if not self.has_latents:
            return []
        c, h, w = self._latent_shape
        return [(self._latent_files[i], "latent moments", (2 * c, h, w))]

    def scan(self, decode: bool = True) -> list[str]:
        """Every file against the folder's shapes (what opening leaves to the reads; ``repa prepare --verify DIR``):
        ``decode`` every image, else read its header only. Returns the problems, one line each."""
        from PIL import Image
        problems: list[str] = []
        size = self._image_shape[:0:-1]                       # PIL's (width, height)
        for i, image_file in enumerate(self._image_files):
            try:
                if decode:
                    read_image(image_file, self._image_shape)
                else:
                    with Image.open(image_file) as image:
                        if image.size != size:
                            problems.append(f"{image_file}: image of size {image.size}, expected {size}")
                for file, what, shape in self._arrays_of(i):
                    found = _npy_shape(file, what)
                    if found != shape:
                        problems.append(f"{file}: {what} of shape {found}, expected {shape}")
            except (DataError, OSError) as exc:
                problems.append(" ".join(str(exc).split()))
        return problems

    def token_cache_key(self, encoder_name: str, resolution: int, token_grid: int) -> str | None:
        """None: a reference folder holds no teacher tokens; the teacher runs on the images at every step, as in
        the reference's ``train.py``."""
        log.info("%s is a reference folder without token caches: %s runs on its images at every step",
                 self.path, encoder_name)
        return None


# ---- the reference's ImageNet folder: images/ + vae-sd/ ----------------------------------------------------------

def _walk(root: str, keep) -> list[str]:
    """Relative paths ('/'-separated) under ``root`` of the files ``keep(name)`` accepts, sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        found += [name if rel == "." else f"{rel}/{name}" for name in files if keep(name)]
    return sorted(found)


def _pair_key(rel: str, prefix: str) -> str:
    """The name both stores share: ``00000/img00000007.png`` and ``00000/img-mean-std-00000007.npy`` ->
    ``00000/00000007``."""
    folder, _, name = rel.rpartition("/")
    stem = name.rpartition(".")[0] or name
    stem = stem[len(prefix):] if stem.startswith(prefix) else stem
    return f"{folder}/{stem}" if folder else stem


def _keyed(files: list[str], prefix: str, root: str) -> dict[str, str]:
    keyed: dict[str, str] = {}
    for rel in files:
        key = _pair_key(rel, prefix)
        if key in keyed:
            raise DataError(f"{root}/{rel} and {root}/{keyed[key]} have the same index; keep one of them")
        keyed[key] = rel
    return keyed


def _read_labels(json_path: str, fix: str) -> dict[str, int] | None:
    """``dataset.json`` of dataset_tools.py -> {relative file name: label}, or None when it stores no labels."""
    if not os.path.isfile(json_path):
        raise DataError(f"{json_path}: missing (it holds the class labels); {fix}")
    try:
        with open(json_path, encoding="utf-8") as f:
            pairs = json.load(f)["labels"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{json_path}: not a dataset_tools.py label file ({type(exc).__name__}: {exc}); {fix}") \
            from None
    if pairs is None:
        return None
    try:
        labels = {str(name).replace("\\", "/"): label for name, label in pairs}
    except (TypeError, ValueError):
        raise DataError(f"{json_path}: 'labels' must be a list of [file name, class index] pairs; {fix}") from None
    bad = next((n for n, v in labels.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0), None)
    if bad is not None:
        raise DataError(f"{json_path}: the label of {bad!r} is {labels[bad]!r}, expected a class index >= 0; {fix}")
    return labels


class ReferenceImageNetFolder(_FileDataset):
    """A folder written by the reference's ``dataset_tools.py convert`` (``images/``) and ``encode``
    (``vae-sd/``), opened for random access; see the module docstring for the layout and the checks."""

    moments = "mean_std"

    def __init__(self, path: str):
        path = os.path.abspath(os.fspath(path))
        images_dir, latents_dir = os.path.join(path, REFERENCE_IMAGES), os.path.join(path, REFERENCE_LATENTS)
        encode = (f"run the reference's `python preprocessing/dataset_tools.py encode --source={images_dir} "
                  f"--dest={latents_dir}`")
        if not os.path.isdir(images_dir):
            raise DataError(f"{images_dir}: missing; the teacher and the previews read the images: write them with "
                            f"the reference's `dataset_tools.py convert --dest={images_dir}`")
        images = _keyed(_walk(images_dir, lambda n: n.lower().endswith(IMAGE_EXTENSIONS)), "img", images_dir)
        if os.path.isdir(latents_dir):
            latents = _keyed(_walk(latents_dir, lambda n: n.endswith(".npy")), "img-mean-std-", latents_dir)
            self._check_pairs(images, latents, images_dir, latents_dir, encode)
            keys = sorted(latents)
            labels = self._labels(os.path.join(latents_dir, LABELS_FILE), [latents[k] for k in keys], encode)
            image_labels = _read_labels(os.path.join(images_dir, LABELS_FILE), encode) \
                if os.path.isfile(os.path.join(images_dir, LABELS_FILE)) else None
            for key, label in zip(keys, labels):
                if image_labels is not None and image_labels.get(images[key], label) != label:
                    raise DataError(f"{images_dir}/{images[key]} has label {image_labels[images[key]]} in "
                                    f"images/{LABELS_FILE} but its latent has {label} in vae-sd/{LABELS_FILE}; the "
                                    f"two folders come from different sources: {encode}")
            latent_files = [os.path.join(latents_dir, latents[k]) for k in keys]
        else:
            keys, latent_files = sorted(images), None
            labels = self._labels(os.path.join(images_dir, LABELS_FILE), [images[k] for k in keys],
                                  "run the reference's `dataset_tools.py convert` again")
        self._setup(path, [os.path.join(images_dir, images[k]) for k in keys], latent_files, labels)

    @staticmethod
    def _check_pairs(images: dict[str, str], latents: dict[str, str], images_dir: str, latents_dir: str,
                     encode: str) -> None:
        lonely_latent = sorted(set(latents) - set(images))
        if lonely_latent:
            raise DataError(f"{latents_dir}/{latents[lonely_latent[0]]}: no image of that index in "
                            f"{REFERENCE_IMAGES}/ ({len(latents)} latents, {len(images)} images); the latents come "
                            f"from other images: {encode}")
        lonely_image = sorted(set(images) - set(latents))
        if lonely_image:
            raise DataError(f"{images_dir}/{images[lonely_image[0]]}: no latent of that index in "
                            f"{REFERENCE_LATENTS}/ ({len(images)} images, {len(latents)} latents; "
                            f"{len(lonely_image)} without a latent): the encoding did not finish: {encode}")

    def _labels(self, json_path: str, files: list[str], fix: str) -> np.ndarray:
        labels = _read_labels(json_path, fix)
        if labels is None:                         # dataset_tools.py writes null for an unlabelled source
            self.num_classes, self.class_names = 0, []
            return np.zeros(len(files), np.int64)
        missing = next((f for f in files if f not in labels), None)
        if missing is not None:
            raise DataError(f"{json_path}: no label for {missing!r}; the labels and the files come from different "
                            f"runs: {fix}")
        values = np.array([labels[f] for f in files], np.int64)
        self.num_classes = int(values.max()) + 1 if len(values) else 0
        self.class_names = [str(i) for i in range(self.num_classes)]
        return values

    def __repr__(self) -> str:
        return (f"ReferenceImageNetFolder({self.path!r}, items={len(self)}, classes={self.num_classes}, "
                f"{self.channels}x{self.resolution}x{self.resolution}, keys={self.keys})")


# ---- U-ViT's MS-COCO features: {i}.png, {i}.npy, {i}_{k}.npy, empty_context.npy ---------------------------------

_COCO_NAME = re.compile(r"^(\d+)(?:_(\d+))?\.(npy|png)$")


class UViTCocoFeatures(_FileDataset):
    """One split of U-ViT's MS-COCO feature folder (the layout the reference's text-to-image path trains from),
    opened for random access: a captioned dataset (see the module docstring).

    Beyond the ``Dataset`` members: ``caption_counts`` int64 (N,) (captions of each image, >= 1),
    ``get_contexts(indices, caption_indices)`` float32 (B, L, D), ``empty_context`` float32 (L, D) and
    ``captions(index)`` (None: this layout stores the text tokens only).
    """

    moments = "mean_logvar"

    def __init__(self, path: str):
        path = os.path.abspath(os.fspath(path))
        split = path
        if os.path.isdir(os.path.join(path, "train")) and not _coco_files(path)[0]:
            split = os.path.join(path, "train")                 # the root: the training split, as the reference
        empty = next((p for p in (os.path.join(split, EMPTY_CONTEXT), os.path.join(os.path.dirname(split),
                      EMPTY_CONTEXT)) if os.path.isfile(p)), None)
        if empty is None:
            raise DataError(f"{os.path.dirname(split)}/{EMPTY_CONTEXT}: missing (the empty caption's tokens, the "
                            "null condition); write it with U-ViT's scripts/extract_empty_feature.py")
        self.empty_context = read_npy(empty, what="empty context")
        if self.empty_context.ndim != 2:
            raise DataError(f"{empty}: shape {self.empty_context.shape}, expected (tokens, width), e.g. (77, 768)")
        moments, images, contexts = _coco_files(split)
        count = len(moments)
        fix = "write the split again with U-ViT's scripts/extract_mscoco_feature.py (and the images beside it)"
        missing = next((i for i in range(count) if i not in moments), None)
        if missing is not None:
            raise DataError(f"{split}/{missing}.npy: missing ({count} latent files, numbered 0..{max(moments)}); "
                            f"items must be numbered 0..N-1: {fix}")
        extra = sorted(set(images) - set(moments)) or sorted(set(contexts) - set(moments))
        if len(images) != count or extra:
            lonely = (f"{extra[0]}.png has no {extra[0]}.npy" if extra and extra[0] in images else
                      f"{extra[0]}_0.npy has no {extra[0]}.npy" if extra else
                      f"{next(i for i in range(count) if i not in images)}.png is missing")
            raise DataError(f"{split}: {len(images)} images for {count} latents ({lonely}); {fix}")
        counts = np.zeros(count, np.int64)
        for i in range(count):
            ks = contexts.get(i, set())
            k = next((k for k in range(len(ks) + 1) if k not in ks), 0)
            if k < len(ks) or not ks:
                raise DataError(f"{split}/{i}_{k}.npy: missing (image {i} has {len(ks)} caption file(s), numbered "
                                f"{sorted(ks)[:5]}; captions must be numbered {i}_0, {i}_1, ...): {fix}")
            counts[i] = len(ks)
        self.caption_counts = counts
        self.num_classes, self.class_names = 0, []
        self._split = split
        self._setup(path, [os.path.join(split, f"{i}.png") for i in range(count)],
                    [os.path.join(split, f"{i}.npy") for i in range(count)], np.zeros(count, np.int64))
        first = _npy_shape(os.path.join(split, "0_0.npy"), "text context")
        if first != self.empty_context.shape:
            raise DataError(f"{split}/0_0.npy: text context of shape {first}, but {empty} is "
                            f"{self.empty_context.shape}; both must come from the same text encoder: {fix}")

    def get_contexts(self, indices, caption_indices) -> np.ndarray:
        """The text tokens of caption ``caption_indices[b]`` of item ``indices[b]``: float32 (B, L, D)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        which = np.asarray(caption_indices, dtype=np.int64).reshape(-1)
        if len(idx) != len(which):
            raise ValueError(f"{len(idx)} indices but {len(which)} caption indices")
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} items: {idx.min()}..{idx.max()}")
        if len(idx) and ((which < 0).any() or (which >= self.caption_counts[idx]).any()):
            b = int(np.flatnonzero((which < 0) | (which >= self.caption_counts[idx]))[0])
            raise IndexError(f"item {idx[b]} has {self.caption_counts[idx[b]]} captions, caption {which[b]} asked")
        out = np.zeros((len(idx), *self.empty_context.shape), np.float32)
        for row, (i, k) in enumerate(zip(idx.tolist(), which.tolist())):
            out[row] = read_npy(os.path.join(self._split, f"{i}_{k}.npy"), self.empty_context.shape, "text context")
        return out

    def _arrays_of(self, i: int) -> list[tuple[str, str, tuple[int, ...]]]:
        return super()._arrays_of(i) + [(os.path.join(self._split, f"{i}_{k}.npy"), "text context",
                                         self.empty_context.shape) for k in range(int(self.caption_counts[i]))]

    def captions(self, index: int) -> list[str] | None:
        """None: U-ViT's folder stores the captions' text tokens, not their text."""
        return None

    def __repr__(self) -> str:
        return (f"UViTCocoFeatures({self._split!r}, items={len(self)}, captions={int(self.caption_counts.sum())}, "
                f"{self.channels}x{self.resolution}x{self.resolution}, context={self.empty_context.shape})")


def _coco_files(split: str) -> tuple[set[int], set[int], dict[int, set[int]]]:
    """The indices of ``{i}.npy`` and ``{i}.png`` and the caption numbers of ``{i}_{k}.npy`` in one split folder."""
    moments, images, contexts = set(), set(), {}
    with os.scandir(split) as entries:
        for entry in entries:
            match = _COCO_NAME.match(entry.name)
            if match is None:
                continue
            i, k, ext = int(match[1]), match[2], match[3]
            if ext == "png" and k is None:
                images.add(i)
            elif ext == "npy":
                moments.add(i) if k is None else contexts.setdefault(i, set()).add(int(k))
    return moments, images, contexts


# ---- which reader a folder needs ---------------------------------------------------------------------------------

def _is_reference_imagenet(path: str) -> bool:
    return any(os.path.isdir(os.path.join(path, d)) for d in (REFERENCE_IMAGES, REFERENCE_LATENTS))


def _is_uvit_coco(path: str) -> bool:
    """The root (empty_context.npy or train/0.npy beside train/) or one split folder (0.npy, 0_0.npy)."""
    split = lambda d: any(os.path.isfile(os.path.join(d, f)) for f in ("0.npy", "0_0.npy"))     # noqa: E731
    train = os.path.join(path, "train")
    return split(path) or (os.path.isdir(train) and (os.path.isfile(os.path.join(path, EMPTY_CONTEXT))
                                                    or split(train)))


# name -> (what the folder is, is it one, its reader); open_folder tries them in order
LAYOUTS = {
    "reference-imagenet": ("the reference's ImageNet folder (images/ + vae-sd/ of dataset_tools.py)",
                           _is_reference_imagenet, ReferenceImageNetFolder),
    "uvit-coco": ("U-ViT's MS-COCO features (train/, val/, empty_context.npy)", _is_uvit_coco, UViTCocoFeatures),
}


def detect_layout(path: str | os.PathLike) -> str | None:
    """The ``LAYOUTS`` name of the folder at ``path``, or None (a prepared dataset, or something else)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, store.MANIFEST)):
        return None
    return next((name for name, (_, found, _) in LAYOUTS.items() if found(path)), None)


def open_folder(path: str | os.PathLike) -> Dataset:
    """Open a dataset folder: one ``repa prepare`` wrote (``repa.data.open_dataset``), or a reference layout
    (``LAYOUTS``) read as it is.

    Raises:
        FileNotFoundError: no such folder. DataError: a malformed folder (naming the file and the fix), or a folder
            that is none of these.
    """
    path = os.path.abspath(os.fspath(path))
    name = detect_layout(path)
    if name is not None:
        return LAYOUTS[name][2](path)
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in (store.MANIFEST, store.PROGRESS)):
        raise DataError(f"{path!r} is not a prepared dataset (no {store.MANIFEST}) nor a folder of the reference "
                        f"({'; '.join(what for what, _, _ in LAYOUTS.values())}); create one with `repa prepare`")
    return store.open_dataset(path)

