"""``repa analyze``: alignment with a frozen encoder and linear-probe accuracy, per block, for one or more checkpoints.

Three layers, so the arithmetic is testable without checkpoints, encoders or datasets:

- ``analyze_features`` (pure): a FeatureSet and the encoder's pooled features -> per-block CKNNA / CKA / mutual
  k-NN with the encoder, per-block probe accuracy, the same for the projector outputs;
- ``analyze_model``: feature extraction (``repa.analysis.features``) followed by ``analyze_features``;
- ``run_analysis``: loads checkpoints (``repa.load_model``), the dataset (``repa.data.open_dataset``) and the encoder
  (``repa.encoders.load_encoder``), runs the above for every checkpoint on the same fixed subset, with the same
  noise and the same encoder features, and writes ``analysis.json`` plus the plots of ``repa.analysis.plots``.

Alignment is measured as in REPA's analysis, which follows Huh et al. (2024): CKNNA with k = 10 between the
token-averaged hidden state of each block and the token-averaged encoder features of the clean image, rows
L2-normalised first. Metrics and probes run on the analysis device (a GPU when there is one).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from repa.analysis.features import FeatureSet, check_time, encoder_features, extract_features
from repa.analysis.metrics import cka, cknna, l2_normalize, mutual_knn
from repa.analysis.probe import linear_probe
from repa.checkpoint import LoadedModel, load_model
from repa.config import ConfigError
from repa.data.protocol import Dataset
from repa.utils import from_uint8


@dataclass(frozen=True)
class AnalyzeOptions:
    """Settings shared by every checkpoint of one analysis (saved into analysis.json; ``repa analyze``'s options)."""
    num_samples: int = 1000           # size of the fixed random subset
    t: float = 0.5                    # diffusion time of the inputs (0 data, 1 noise)
    layers: Optional[tuple[int, ...]] = None  # 1-based blocks (default: all)
    topk: int = 10                    # k of CKNNA and mutual k-NN
    batch_size: int = 64              # forward batch size
    seed: int = 0                     # seeds the subset, the noise, the latent posterior samples and the probe split
    normalize: bool = True            # L2-normalise rows before the alignment metrics (the PRH protocol)
    probe: bool = True                # fit a linear probe per block (--no-probe skips them)
    probe_epochs: int = 100           # epochs of each linear probe
    probe_batch_size: int = 256       # batch size of the probes' training
    probe_test_fraction: float = 0.2  # share of the subset held out to score the probes

    def validate(self) -> None:
        """Raise ValueError naming the bad option."""
        check_time(self.t)
        if self.num_samples < 4:
            raise ConfigError(f"num_samples must be >= 4, got {self.num_samples}")
        if not 1 <= self.topk < self.num_samples:
            raise ConfigError(f"topk must satisfy 1 <= topk < num_samples ({self.num_samples}), got {self.topk}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


# ---- the pure part -----------------------------------------------------------------------------------------------

def alignment_scores(features, target, *, topk: int = 10, normalize: bool = True,
                     device: torch.device | str | None = None) -> dict[str, float]:
    """CKNNA, linear CKA (biased and unbiased) and mutual k-NN between two (N, D) feature matrices (on ``device``)."""
    if device is not None:
        features, target = torch.as_tensor(features).to(device), torch.as_tensor(target).to(device)
    a, b = (l2_normalize(features), l2_normalize(target)) if normalize else (features, target)
    return {"cknna": cknna(a, b, topk=topk), "cka": cka(a, b), "cka_unbiased": cka(a, b, unbiased=True),
            "mutual_knn": mutual_knn(a, b, topk=topk)}


def _probe(features: torch.Tensor, labels: torch.Tensor, opts: AnalyzeOptions, device=None) -> dict:
    result = linear_probe(features, labels, test_fraction=opts.probe_test_fraction, seed=opts.seed,
                          epochs=opts.probe_epochs, batch_size=opts.probe_batch_size, device=device)
    return result.to_dict()


def analyze_features(features: FeatureSet, encoder_pooled: torch.Tensor, opts: AnalyzeOptions, *,
                     device: torch.device | str | None = None) -> dict:
    """Per-block alignment with the encoder and probe accuracy, from already extracted features.

    Args:
        features: the model's FeatureSet (pooled hidden states, projector outputs, labels).
        encoder_pooled: (N, E) token-averaged encoder features of the same samples, in the same order.
        opts: topk, normalisation and probe settings.
        device: where the metrics and probes run (default: where the features are, the CPU).
    Returns:
        ``{"layers": [{"layer", "cknna", "cka", "cka_unbiased", "mutual_knn", "probe_accuracy", "probe"}, ...],
        "projectors": [{"index", "cknna", ...}, ...]}``.
    """
    if encoder_pooled.shape[0] != features.num_samples:
        raise ValueError(f"encoder features hold {encoder_pooled.shape[0]} samples, the model features "
                         f"{features.num_samples}: both must come from the same subset")
    layers = []
    for layer in features.layers:
        row = {"layer": layer, **alignment_scores(features.pooled[layer], encoder_pooled, topk=opts.topk,
                                                  normalize=opts.normalize, device=device)}
        if opts.probe:
            row["probe"] = _probe(features.pooled[layer], features.labels, opts, device)
            row["probe_accuracy"] = row["probe"]["best_accuracy"]
        layers.append(row)
    projectors = []
    for index, projected in enumerate(features.projected_pooled):
        if projected.shape[1] != encoder_pooled.shape[1]:
            continue          # a projector trained for another encoder width: no token-wise counterpart
        projectors.append({"index": index, **alignment_scores(projected, encoder_pooled, topk=opts.topk,
                                                              normalize=opts.normalize, device=device)})
    return {"layers": layers, "projectors": projectors}


def analyze_model(model: torch.nn.Module, make_batches: Callable[[], Iterable[dict]], encoder_pooled: torch.Tensor,
                  opts: AnalyzeOptions, *, path: str = "linear", class_tokens=None) -> dict:
    """Extract features of ``model`` on the batches of ``make_batches()`` and run ``analyze_features``.

    Args:
        model: a network with ``forward_features`` (the model contract, ``repa.analysis.features``).
        make_batches: returns a fresh iterable of batches (``"x0"``, ``"label"``), the same samples in the same order
            as those ``encoder_pooled`` was computed on.
        encoder_pooled: (N, E) pooled encoder features.
        opts: analysis settings (t, layers, seed, ...).
        path: the interpolant the model was trained with.
        class_tokens: REG networks: images -> the training teacher's class tokens (``extract_features``).
    """
    opts.validate()
    features = extract_features(model, make_batches(), t=opts.t, path=path, layers=opts.layers, seed=opts.seed,
                                class_tokens=class_tokens)
    parameter = next(model.parameters(), None)
    return analyze_features(features, encoder_pooled, opts, device=parameter.device if parameter is not None else None)


def training_curves(entries: Sequence[dict], metric: str = "cknna") -> list[dict]:
    """Group checkpoint results by run and, for runs with several steps, give ``metric`` against the step.

    Each entry needs ``run``, ``step``, ``alignment_depth`` and ``layers`` (as written by ``run_analysis``).
    Returns one ``{"run", "steps", "alignment_depth", "at_alignment_depth", "best_layer_value"}`` per run with at
    least two distinct steps, steps ascending.
    """
    runs: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.get("step") is not None:
            runs.setdefault(entry["run"], []).append(entry)
    curves = []
    for run, members in runs.items():
        members = sorted(members, key=lambda e: e["step"])
        if len({m["step"] for m in members}) < 2:
            continue
        depth = members[0].get("alignment_depth")
        at_depth = [next((r[metric] for r in m["layers"] if r["layer"] == depth), None) for m in members]
        curves.append({"run": run, "steps": [m["step"] for m in members], "alignment_depth": depth,
                       "at_alignment_depth": at_depth,
                       "best_layer_value": [max(r[metric] for r in m["layers"]) for m in members]})
    return curves


# ---- data, checkpoints, encoders ---------------------------------------------------------------------------------

def fixed_subset(dataset_size: int, num_samples: int, seed: int) -> np.ndarray:
    """The sorted indices of a seeded random subset; the same for every checkpoint of an analysis."""
    if num_samples > dataset_size:
        raise ConfigError(f"--num-samples {num_samples} exceeds the dataset size {dataset_size}")
    return np.sort(np.random.default_rng(seed).choice(dataset_size, size=num_samples, replace=False))


def dataset_batches(dataset: Dataset, indices: np.ndarray, batch_size: int, *, space: str,
                    seed: int) -> Iterable[dict]:
    """Batches of the prepared dataset as the analysis needs them: ``x0`` (model space), ``label``, ``image``.

    Pixel models take images mapped to [-1, 1]; latent models take one posterior sample per image drawn with a
    generator seeded by (seed, position in the subset), so every checkpoint sees identical inputs.
    """
    if space == "latent" and not dataset.has_latents:
        raise ValueError("the model works on VAE latents but the dataset has none; prepare it with a VAE "
                         "(repa prepare --vae ...)")
    for start in range(0, len(indices), batch_size):
        wanted = ["image", "label"] + (["latent_mean", "latent_std"] if space == "latent" else [])
        batch = dataset.get_batch(indices[start:start + batch_size], keys=wanted)
        image = torch.from_numpy(np.asarray(batch["image"]))                            # uint8 (B, C, H, W)
        if space == "pixel":
            x0 = from_uint8(image)
        elif space == "latent":
            from repa.autoencoder import sample_latents
            mean = torch.from_numpy(np.asarray(batch["latent_mean"])).float()
            std = torch.from_numpy(np.asarray(batch["latent_std"])).float()
            x0 = torch.cat([sample_latents(mean[i:i + 1], std[i:i + 1],
                                           generator=torch.Generator().manual_seed(seed * 1_000_003 + start + i))
                            for i in range(len(mean))])
        else:
            raise ConfigError(f"unknown model space {space!r}; expected 'latent' or 'pixel'")
        yield {"x0": x0, "label": torch.from_numpy(np.asarray(batch["label"])).long(), "image": image}


def _collect_labels(batches: Iterable[dict], into: list) -> Iterable[dict]:
    """Pass batches through, appending their labels to ``into`` the first time (when it is empty)."""
    collect = not into
    for batch in batches:
        if collect:
            into.append(batch["label"])
        yield batch


def _run_name(loaded: LoadedModel) -> str:
    """The run a checkpoint belongs to: its training run_dir, else the folder that holds its checkpoints folder."""
    if loaded.train_config is not None and loaded.train_config.run_dir:
        return str(loaded.train_config.run_dir)
    parent = loaded.path.resolve().parent
    return str(parent.parent if parent.name == "checkpoints" else parent)


def _class_tokens(loaded: LoadedModel, resolution: int, device):
    """For a REG network, images -> the class tokens (B, E) of the teacher it was trained with; else None."""
    cfg, train = loaded.config, loaded.train_config
    if not cfg.class_token:
        return None
    if train is None or not train.encoders:
        raise ConfigError(f"{loaded.path}: a REG network needs the class token of the teacher it was trained with, "
                          "and the checkpoint does not name one; analyse a checkpoint written by repa train")
    from repa.encoders import load_encoder
    teacher = load_encoder(train.encoders[0], resolution=resolution, token_grid=cfg.grid_size, device=device,
                           weights=train.encoder_weights[0] if train.encoder_weights else None)
    return lambda images: teacher.tokens_and_class_token(images)[1]


def _pick_encoder(loaded: LoadedModel, checkpoint: str, name: str | None,
                  weights: str | None) -> tuple[str, str | None]:
    """The encoder to compare against: ``name`` if given, else the first encoder of the checkpoint's training."""
    if name:
        return name, weights
    cfg = loaded.train_config
    if cfg is not None and cfg.encoders:
        return cfg.encoders[0], weights or (cfg.encoder_weights[0] if cfg.encoder_weights else None)
    if cfg is not None:
        raise ConfigError(f"{checkpoint} was trained without a teacher (SRA's self-alignment, or no encoder): pass "
                          "--encoder NAME to compare its blocks with a frozen encoder (e.g. dinov2-vit-b)")
    raise ConfigError(f"{checkpoint} has no training config naming an encoder (reference checkpoints do not): pass "
                     "--encoder NAME (e.g. dinov2-vit-b)")


def run_analysis(checkpoints: Sequence[str], data, out: str, opts: AnalyzeOptions = AnalyzeOptions(), *,
                 encoder=None, encoder_weights: str | None = None, which: str = "ema",
                 device: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Analyse checkpoints against one frozen encoder on a fixed subset of a dataset; write the report.

    Every checkpoint sees the same samples, the same noise and the same encoder features; checkpoints are loaded
    one at a time, so many large checkpoints fit in memory.

    Args:
        checkpoints: checkpoint files (one run at several steps, or several runs, e.g. REPA and vanilla).
        data: prepared dataset directory (``repa.data.open_dataset``), or a ``repa.data.Dataset`` object, e.g.
            ``repa.data.memory.ArrayDataset``.
        out: output folder for ``analysis.json`` and the PNG plots.
        opts: analysis settings.
        encoder: encoder name (``repa.encoders.load_encoder``) or an encoder object (uint8 images -> (B, N, E),
            with ``.name``); default: the first encoder the first checkpoint was trained with.
        encoder_weights: local weights for a named encoder.
        which: ``ema`` or ``model`` weights.
        device: torch device; default CUDA when available.
        log: progress messages.
    Returns:
        The dict written to ``out/analysis.json`` (plus ``"plots"``, the PNG paths).
    """
    from repa.analysis.plots import write_plots

    opts.validate()
    if not checkpoints:
        raise ConfigError("give at least one checkpoint")
    missing = [str(c) for c in checkpoints if not Path(c).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {missing[0]} does not exist")
    from repa.preflight import check_output_dir
    check_output_dir(out, "--out")              # before any model runs: a file or a read-only folder fails now
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(data, (str, os.PathLike)):
        from repa.data import open_dataset
        dataset, data_name = open_dataset(data), str(data)
    else:
        dataset, data_name = data, type(data).__name__
    indices = fixed_subset(len(dataset), opts.num_samples, opts.seed)
    encoder_name = None if encoder is None or isinstance(encoder, str) else getattr(encoder, "name", "encoder")
    encoder_cache: dict[int, torch.Tensor] = {}      # token grid -> (N, E) pooled encoder features
    labels: list[torch.Tensor] = []
    entries = []
    for path in checkpoints:
        loaded = load_model(path, which=which, device=device)
        model, cfg, train_config = loaded.model, loaded.config, loaded.train_config
        if encoder_name is None:
            encoder_name, encoder_weights = _pick_encoder(loaded, path, encoder, encoder_weights)

        def make_batches(space=cfg.space):
            return dataset_batches(dataset, indices, opts.batch_size, space=space, seed=opts.seed)

        if cfg.grid_size not in encoder_cache:
            log(f"encoder {encoder_name}: features of {len(indices)} images ({cfg.grid_size}x{cfg.grid_size} tokens)")
            if isinstance(encoder, str) or encoder is None:
                from repa.encoders import load_encoder
                enc = load_encoder(encoder_name, resolution=dataset.resolution, token_grid=cfg.grid_size,
                                   weights=encoder_weights, device=device)
                enc_device = device
            else:
                enc = encoder
                tensors = list(enc.parameters()) + list(enc.buffers()) if isinstance(enc, torch.nn.Module) else []
                enc_device = tensors[0].device if tensors else None
            encoder_cache[cfg.grid_size] = encoder_features(enc, _collect_labels(make_batches(), labels),
                                                            device=enc_device)[0]
            del enc
        step = loaded.step
        log(f"{path}: {cfg.name}, step {step}, t={opts.t}, {len(indices)} samples")
        try:
            result = analyze_model(model, make_batches, encoder_cache[cfg.grid_size], opts, path=loaded.interpolant,
                                   class_tokens=_class_tokens(loaded, dataset.resolution, device))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        entries.append({
            "checkpoint": str(path), "run": _run_name(loaded), "step": step, "model": cfg.name,
            "alignment_depth": cfg.encoder_depth,
            "proj_coeff": train_config.objective.proj_coeff if train_config is not None else None,
            "training_encoders": list(train_config.encoders) if train_config is not None else None,
            **result,
        })
        del model, loaded
    report = {
        "settings": {**asdict(opts), "which": which},
        "data": {"path": data_name, "resolution": dataset.resolution, "num_classes": dataset.num_classes,
                 "num_samples": len(indices)},
        "encoder": {"name": encoder_name, "weights": encoder_weights},
        "checkpoints": entries,
        "training_curves": training_curves(entries),
    }
    if opts.probe:   # the encoder's own probe accuracy: the reference the model's curve is compared with
        report["encoder"]["probe"] = _probe(next(iter(encoder_cache.values())), torch.cat(labels), opts, device)
    os.makedirs(out, exist_ok=True)
    report["plots"] = write_plots(report, out)
    with open(Path(out) / "analysis.json", "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
    log(summary_table(report))
    log(f"wrote {Path(out) / 'analysis.json'} and {len(report['plots'])} plots")
    return report


def summary_table(report: dict) -> str:
    """One line per checkpoint: CKNNA at the aligned block, the best block and its CKNNA, the best probe."""
    def fmt(value, spec=".3f"):
        return "-" if value is None else format(value, spec)
    lines = [f"{'run':20s} {'step':>8s} {'CKNNA@depth':>11s} {'best block':>10s} {'best CKNNA':>10s} "
             f"{'best probe':>10s}"]
    for entry in report["checkpoints"]:
        rows = entry["layers"]
        at_depth = next((r["cknna"] for r in rows if r["layer"] == entry["alignment_depth"]), None)
        best = max(rows, key=lambda r: r["cknna"]) if rows else None
        probes = [r["probe_accuracy"] for r in rows if r.get("probe_accuracy") is not None]
        lines.append(f"{str(entry['run'])[:20]:20s} {entry['step']:8d} {fmt(at_depth):>11s} "
                     f"{(best['layer'] if best else '-')!s:>10s} {fmt(best['cknna'] if best else None):>10s} "
                     f"{fmt(max(probes) if probes else None):>10s}")
    probe = report["encoder"].get("probe")
    if isinstance(probe, dict) and probe.get("best_accuracy") is not None:
        lines.append(f"encoder {report['encoder']['name']}: probe accuracy {probe['best_accuracy']:.3f}")
    return "\n".join(lines)


__all__ = ["AnalyzeOptions", "alignment_scores", "analyze_features", "analyze_model", "training_curves",
           "fixed_subset", "dataset_batches", "run_analysis"]
