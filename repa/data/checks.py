"""A dataset against the model that will train on it: checked before anything is built or written."""
from __future__ import annotations

from repa.config import ConfigError
from repa.data.protocol import Dataset, check_text_dataset
from repa.data.store import PreparedDataset
from repa.data.verify import verify_dataset


def check_dataset_for_model(cfg, dataset: Dataset) -> None:
    """Refuse a dataset whose images (or latents), resolution or labels do not fit ``cfg`` (a TrainConfig).

    For a prepared dataset the shard files are also checked against the manifest (sizes, shapes, dtypes; the full
    hashes stay with ``repa prepare --verify``); a reference folder (``repa.data.layouts``) checks itself when it
    opens.

    Raises:
        ConfigError: naming the mismatch and the flag that fixes it.
    """
    m, where = cfg.model, dataset.path if dataset.path is not None else "the dataset"
    if m.space == "pixel":
        have = (dataset.channels, dataset.resolution)
        if have != (m.in_channels, m.input_size):
            raise ConfigError(f"{where} holds {dataset.channels}x{dataset.resolution}x{dataset.resolution} images, "
                              f"the pixel-space model expects {m.in_channels}x{m.input_size}x{m.input_size}: set "
                              f"--model.in-channels {dataset.channels} --model.input-size {dataset.resolution} "
                              f"--data.resolution {dataset.resolution}, or prepare the data at that size")
    else:
        shape = dataset.array_shape("latent_mean")
        if shape is None:
            raise ConfigError(f"model.space is 'latent' but {where} has no VAE latents; prepare it with "
                              f"`repa prepare SOURCE OUT --latents`, or train in pixel space (--model.space pixel)")
        if tuple(shape) != (m.in_channels, m.input_size, m.input_size):
            raise ConfigError(f"{where} holds latents of shape {tuple(shape)}, the model expects "
                              f"{(m.in_channels, m.input_size, m.input_size)}: set --model.in-channels {shape[0]} "
                              f"--model.input-size {shape[1]}")
    if cfg.data.resolution != dataset.resolution:
        raise ConfigError(f"data.resolution is {cfg.data.resolution} but {where} holds {dataset.resolution}px "
                          f"images: set --data.resolution {dataset.resolution}")
    if isinstance(dataset, PreparedDataset):
        problems = verify_dataset(dataset.path, check_hashes=False)
        if problems:
            raise ConfigError(f"{where} does not match its manifest: {'; '.join(problems[:3])}"
                              f"{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}; run "
                              f"`repa prepare --verify {where}` and prepare it again")
    if m.family == "MMDiT":                        # a text model reads captions, not labels
        check_text_dataset(dataset, m.context_dim)
        return
    if m.num_classes == 0:                         # an unconditional model reads no labels
        return
    if dataset.num_classes == 0:
        raise ConfigError(f"{where} has no class labels but the model is class-conditional: train it unconditional "
                          "(--model.num-classes 0 --model.class-dropout 0), or give a labelled dataset")
    labels = dataset.labels
    if len(labels):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= m.num_classes:
            raise ConfigError(f"{where} has labels {low}..{high}, outside the model's classes 0..{m.num_classes - 1}:"
                              f" set --model.num-classes {max(high + 1, dataset.num_classes)}")
    if dataset.num_classes > m.num_classes:
        raise ConfigError(f"model.num_classes={m.num_classes} but {where} has {dataset.num_classes} classes: set "
                          f"--model.num-classes {dataset.num_classes}")
