"""The on-disk dataset format and random access to it.

A dataset directory::

    manifest.json                 written LAST: a directory without it is never a dataset
    files.txt                     source reference of item i on line i (flip copies end in "#hflip")
    skipped.txt                   "<source ref>\t<reason>" for every file left out
    warnings.txt                  "<source ref>\t<note>" for files kept after a conversion (CMYK->RGB, upscaled, ...)
    image/000000.npy ...          uint8 (n_k, C, H, W), one shard per preparation chunk k
    label/000000.npy ...          int64 (n_k,)
    latent_mean/, latent_std/     optional, float32 or float16 (n_k, 4, H/8, W/8): the VAE posterior
    tokens/<key>.json, tokens/<key>/000000.npy    optional encoder-token caches, float16 (n_k, T, E)
    captions/meta.json, captions/...              optional caption tokens (repa.data.captions): a CaptionedDataset

Shards are plain ``.npy`` files opened with ``np.load(mmap_mode="r")``, so random access costs one memory copy per
item. The manifest holds the shard sizes and a sha256 per shard file; ``verify_dataset`` re-checks everything.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os

import numpy as np

from repa.data.protocol import DataError, Dataset  # noqa: F401  (DataError: imported from here too)
from repa.utils import atomic_write

log = logging.getLogger("repa.data")

FORMAT = "repa-dataset"
FORMAT_VERSION = 1
TOKEN_FORMAT = "repa-token-cache"
MANIFEST = "manifest.json"
FILES = "files.txt"
SKIPPED = "skipped.txt"
WARNINGS = "warnings.txt"
PROGRESS = ".progress"
TOKENS = "tokens"
CAPTIONS = "captions"                 # caption tokens of a captioned dataset (repa.data.captions)
LATENT_FIELDS = ("latent_mean", "latent_std")



# ---- atomic writes with hashes ----------------------------------------------------------------------------------

def shard_path(field: str, chunk: int) -> str:
    """Relative path of shard ``chunk`` of ``field`` ("image", "latent_mean", "tokens/<key>")."""
    return f"{field}/{chunk:06d}.npy"


def _disk_full(path: str, exc: OSError) -> DataError:
    return DataError(f"disk full while writing {path!r} ({exc.strerror}); free space on that file system or "
                     f"choose another output folder, then rerun the same command: finished chunks are kept")


def write_bytes_atomic(path: str, chunks) -> str:
    """Write an iterable of byte strings to ``path`` via a temporary name; return the sha256 of the content.

    Raises:
        DataError: the disk is full (ENOSPC / EDQUOT).
    """
    digest = hashlib.sha256()

    def write(f):
        for chunk in chunks:
            digest.update(chunk)
            f.write(chunk)
    try:
        atomic_write(path, write, tmp=path + ".tmp")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, exc) from None
        raise
    return digest.hexdigest()


def write_npy(path: str, array: np.ndarray) -> str:
    """Save ``array`` as a ``.npy`` file atomically; return the file's sha256."""
    array = np.ascontiguousarray(array)
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape}

    def pieces():
        import io
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        yield buf.getvalue()
        flat = array.reshape(-1).view(np.uint8) if array.size else np.zeros(0, np.uint8)
        step = 1 << 24
        for start in range(0, flat.size, step):
            yield flat[start:start + step].tobytes()
    return write_bytes_atomic(path, pieces())


def write_text(path: str, text: str) -> str:
    """Write UTF-8 text atomically; return its sha256."""
    return write_bytes_atomic(path, [text.encode("utf-8")])


def write_json(path: str, obj: dict) -> str:
    """Write a JSON document atomically (sorted keys, stable bytes); return its sha256."""
    return write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str) -> dict:
    """Read a JSON file; a missing or unparsable file raises DataError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); the file is corrupt") from None


def images_digest(manifest: dict) -> str:
    """One sha256 that identifies the stored images (binds latents and token caches to them)."""
    return hashlib.sha256("".join(manifest["arrays"]["image"]["sha256"]).encode()).hexdigest()


def token_cache_name(encoder_name: str, resolution: int, token_grid: int) -> str:
    """File-system-safe key of a token cache, e.g. ``dinov2-vit-b_r256_g16``."""
    safe = "".join(c if c.isalnum() or c in "-._" else "-" for c in encoder_name)
    return f"{safe}_r{resolution}_g{token_grid}"


# ---- reading ----------------------------------------------------------------------------------------------------

class _ShardedArray:
    """One field stored as shards; gathers arbitrary rows into a new array."""

    def __init__(self, root: str, field: str, counts: list[int], dtype: str, item_shape: tuple[int, ...]):
        self.root, self.field, self.counts = root, field, counts
        self.dtype, self.item_shape = np.dtype(dtype), tuple(item_shape)
        self._maps: list[np.ndarray | None] = [None] * len(counts)

    def shard(self, k: int) -> np.ndarray:
        """Memory map of shard k (opened once)."""
        arr = self._maps[k]
        if arr is None:
            file = os.path.join(self.root, shard_path(self.field, k))
            try:
                arr = np.load(file, mmap_mode="r")
            except (ValueError, OSError) as exc:     # truncated or damaged: name the file
                raise DataError(f"{file}: unreadable ({' '.join(str(exc).split())}); the file is truncated or "
                                f"corrupt: run `repa prepare --verify {self.root}` and prepare it again") from None
            if arr.shape != (self.counts[k], *self.item_shape) or arr.dtype != self.dtype:
                raise DataError(f"{self.root}/{shard_path(self.field, k)}: shape {arr.shape} {arr.dtype}, the "
                                f"manifest says {(self.counts[k], *self.item_shape)} {self.dtype}; run "
                                f"`repa prepare --verify {self.root}`")
            arr = arr.view(np.ndarray)   # plain ndarray over the same map: indexing skips np.memmap's overhead
            self._maps[k] = arr
        return arr

    def gather(self, shard_ids: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Rows (shard_ids[i], local[i]) -> array (B, *item_shape) in the requested order, one copy per row.

        Rows are read in file order (better locality when the data is not in the page cache) and written straight
        to their output position, so no second reordering copy is needed.
        """
        out = np.empty((len(local), *self.item_shape), dtype=self.dtype)
        if len(local) and np.all(shard_ids == shard_ids[0]):
            np.take(self.shard(int(shard_ids[0])), local, axis=0, out=out)
            return out
        maps = self._maps
        order = np.lexsort((local, shard_ids))
        for i, k, j in zip(order.tolist(), shard_ids[order].tolist(), local[order].tolist()):
            out[i] = (maps[k] if maps[k] is not None else self.shard(k))[j]
        return out


class PreparedDataset(Dataset):
    """A prepared dataset directory opened for random access (see the module docstring for the layout).

    ``get_batch(indices)`` returns a dict of numpy arrays: ``"image"`` uint8 (B, C, H, W), ``"label"`` int64 (B,),
    ``"latent_mean"`` / ``"latent_std"`` (B, 4, h, w) when latents were prepared, ``"tokens:<key>"`` float16
    (B, T, E) for each token cache.
    """

    def __init__(self, path: str, manifest: dict):
        self.path = path
        self.manifest = manifest
        counts = manifest["shards"]["counts"]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._arrays = {name: _ShardedArray(path, name, counts, spec["dtype"], spec["item_shape"])
                        for name, spec in manifest["arrays"].items() if name != "label"}
        self.labels = self._load_labels(counts)
        self.token_caches: dict[str, dict] = {}
        tokens_dir = os.path.join(path, TOKENS)
        if os.path.isdir(tokens_dir):
            for fname in sorted(os.listdir(tokens_dir)):
                if fname.endswith(".json"):
                    meta = read_json(os.path.join(tokens_dir, fname))
                    self.token_caches[meta["key"]] = meta
                    if meta["shards"]["counts"] == counts and meta["images_sha256"] == images_digest(manifest):
                        self._arrays[f"tokens:{meta['key']}"] = _ShardedArray(
                            path, f"{TOKENS}/{meta['key']}", counts, meta["dtype"],
                            (meta["num_tokens"], meta["embed_dim"]))

    def _load_labels(self, counts: list[int]) -> np.ndarray:
        try:
            parts = [np.load(os.path.join(self.path, shard_path("label", k))) for k in range(len(counts))]
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"{self.path}: cannot read the labels ({exc}); run `repa prepare --verify "
                            f"{self.path}`") from None
        labels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if len(labels) != len(self):
            raise DataError(f"{self.path}: {len(labels)} labels for {len(self)} items; run `repa prepare --verify`")
        return labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return int(self.manifest["num_items"])

    def __repr__(self) -> str:
        return (f"PreparedDataset({self.path!r}, items={len(self)}, classes={self.num_classes}, "
                f"{self.channels}x{self.resolution}x{self.resolution}, keys={self.keys})")

    num_classes = property(lambda self: int(self.manifest["num_classes"]), doc="number of classes")
    class_names = property(lambda self: list(self.manifest["class_names"]), doc="class names, index = label")
    resolution = property(lambda self: int(self.manifest["resolution"]), doc="image side length in pixels")
    channels = property(lambda self: int(self.manifest["channels"]), doc="1 (greyscale) or 3 (RGB)")
    has_latents = property(lambda self: "latent_mean" in self._arrays, doc="VAE posterior moments are stored")

    @property
    def keys(self) -> list[str]:
        """The keys ``get_batch`` can return."""
        return ["image", "label"] + sorted(k for k in self._arrays if k != "image")

    def array_shape(self, key: str) -> tuple[int, ...] | None:
        """Shape of one item of ``key`` (one of ``self.keys``) as the manifest records it; None when not stored."""
        if key == "label":
            return ()
        array = self._arrays.get(key)
        return array.item_shape if array is not None else None

    def get_batch(self, indices, keys=None) -> dict[str, np.ndarray]:
        """Gather items.

        Args:
            indices: int array-like (B,), any order, repeats allowed.
            keys: subset of ``self.keys`` to read (default all; token caches are large, ask only for the one used).
        Returns:
            dict key -> array with leading dimension B, in the order of ``indices``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} items: {idx.min()}..{idx.max()}")
        wanted = self.keys if keys is None else list(keys)
        shard_ids = np.searchsorted(self._starts, idx, side="right") - 1
        local = idx - self._starts[shard_ids]
        out: dict[str, np.ndarray] = {}
        for key in wanted:
            if key == "label":
                out[key] = self.labels[idx]
            elif key in self._arrays:
                out[key] = self._arrays[key].gather(shard_ids, local)
            else:
                raise KeyError(f"{key!r} is not stored in {self.path}; available: {self.keys}")
        return out

    def token_cache_key(self, encoder_name: str, resolution: int, token_grid: int) -> str | None:
        """Batch key (``"tokens:<cache name>"``) of a token cache valid for this encoder setting, or None.

        None means the encoder must run at every step; the reason (no cache, other encoder, other resolution or
        token grid, cache built from other images) is logged as a warning. Use the key in ``get_batch(keys=...)``.
        """
        key = token_cache_name(encoder_name, resolution, token_grid)
        meta = self.token_caches.get(key)
        if meta is None:
            same_encoder = [m for m in self.token_caches.values() if m["encoder"] == encoder_name]
            if not self.token_caches:
                reason = "the dataset has no token cache"
            elif not same_encoder:
                reason = (f"no cache for encoder {encoder_name!r}; the caches hold encoder(s) "
                          f"{sorted({m['encoder'] for m in self.token_caches.values()})}")
            else:
                found = ", ".join(f"resolution {m['resolution']} token_grid {m['token_grid']}" for m in same_encoder)
                reason = (f"the cache for encoder {encoder_name!r} was computed at {found}, not at resolution "
                          f"{resolution} token_grid {token_grid}")
        elif f"tokens:{key}" not in self._arrays:
            reason = f"cache {key!r} was computed from other images than the ones stored now; rebuild it"
        else:
            return f"tokens:{key}"
        log.warning("token cache not used for %s in %s: %s; the encoder runs at every step instead",
                    encoder_name, self.path, reason)
        return None


class CaptionedDataset(PreparedDataset):
    """A prepared dataset with caption tokens (``repa prepare ... --captions``): a ``repa.data.protocol.TextDataset``
    (layout in ``repa.data.captions``)."""

    def __init__(self, path: str, manifest: dict):
        super().__init__(path, manifest)
        self.caption_meta = meta = read_json(os.path.join(path, CAPTIONS, "meta.json"))
        counts = manifest["shards"]["counts"]
        if meta.get("images_sha256") != images_digest(manifest) or meta.get("counts") != counts:
            raise DataError(f"{path}/{CAPTIONS}: the caption tokens were computed for other images; rerun `repa "
                            "prepare SOURCE OUT --captions FILE` to rebuild them")
        parts = [np.load(os.path.join(path, shard_path(f"{CAPTIONS}/count", k))) for k in range(len(counts))]
        self.caption_counts = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        per_shard = meta["shards"]["captions"]
        self._contexts = _ShardedArray(path, f"{CAPTIONS}/context", per_shard, meta["dtype"],
                                       (meta["context_length"], meta["width"]))
        self._caption_starts = np.concatenate([[0], np.cumsum(per_shard)]).astype(np.int64)
        self._first_caption = np.concatenate([[0], np.cumsum(self.caption_counts)[:-1]]).astype(np.int64)
        self.empty_context = np.load(os.path.join(path, CAPTIONS, "empty_context.npy")).astype(np.float32)
        self._strings = None

    def get_contexts(self, indices, caption_indices) -> np.ndarray:
        """float32 (B, L, D): caption ``caption_indices[b]`` of item ``indices[b]``."""
        idx, k = np.asarray(indices, np.int64).reshape(-1), np.asarray(caption_indices, np.int64).reshape(-1)
        if np.any(k < 0) or np.any(k >= self.caption_counts[idx]):
            raise IndexError("a caption index is outside 0..caption_counts - 1 of its item")
        flat = self._first_caption[idx] + k
        shard_ids = np.searchsorted(self._caption_starts, flat, side="right") - 1
        return self._contexts.gather(shard_ids, flat - self._caption_starts[shard_ids]).astype(np.float32, copy=False)

    def captions(self, index: int) -> list[str] | None:
        if self._strings is None:
            self._strings = read_json(os.path.join(self.path, CAPTIONS, "strings.json"))["captions"]
        return list(self._strings[index])


def open_manifest(path: str | os.PathLike) -> dict:
    """Read and check the manifest of a dataset directory (see ``open_dataset`` for the errors)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset folder {path!r} does not exist; create it with `repa prepare SOURCE {path}`")
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        if os.path.isdir(os.path.join(path, PROGRESS)):
            raise DataError(f"{path!r} is an unfinished preparation (no {MANIFEST}); rerun the same `repa prepare` "
                            f"command to finish it")
        raise DataError(f"{path!r} is not a prepared dataset (no {MANIFEST}); create it with `repa prepare`")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise DataError(f"{manifest_path}: expected a JSON object, got a {type(manifest).__name__}")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{manifest_path}: format {manifest.get('format')!r} version "
                        f"{manifest.get('format_version')!r}; this code reads {FORMAT!r} version {FORMAT_VERSION}")
    _check_manifest(manifest, manifest_path)
    return manifest


def _check_manifest(m: dict, where: str) -> None:
    """The entries every reader uses, with their types; a DataError names the first one missing or wrong."""
    def need(ok: bool, entry: str, expected: str) -> None:
        if not ok:
            raise DataError(f"{where}: entry {entry!r} is missing or not {expected}; the manifest is damaged "
                            "(prepare the dataset again)")
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0     # noqa: E731
    for key in ("num_items", "num_classes", "resolution", "channels"):
        need(is_int(m.get(key)), key, "an integer >= 0")
    need(isinstance(m.get("class_names"), list), "class_names", "a list")
    shards = m.get("shards")
    need(isinstance(shards, dict) and isinstance(shards.get("counts"), list)
         and all(map(is_int, shards["counts"])), "shards.counts", "a list of integers")
    need(sum(shards["counts"]) == m["num_items"], "shards.counts", f"summing to num_items={m['num_items']}")
    arrays = m.get("arrays")
    need(isinstance(arrays, dict) and "image" in arrays and "label" in arrays, "arrays", "a mapping with image, label")
    for name, spec in arrays.items():
        need(isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and isinstance(spec.get("item_shape"), list)
             and all(map(is_int, spec["item_shape"])) and isinstance(spec.get("sha256"), list)
             and len(spec["sha256"]) == len(shards["counts"]), f"arrays.{name}",
             "a mapping with dtype, item_shape and one sha256 per shard")


def open_dataset(path: str | os.PathLike) -> PreparedDataset:
    """Open a prepared dataset directory.

    Raises:
        FileNotFoundError: no such directory. DataError: not a complete dataset (no manifest: an unfinished
            preparation), or a format version this code does not read.
    """
    path = os.path.abspath(os.fspath(path))
    manifest = open_manifest(path)
    captioned = os.path.isfile(os.path.join(path, CAPTIONS, "meta.json"))
    return (CaptionedDataset if captioned else PreparedDataset)(path, manifest)
