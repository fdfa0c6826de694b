"""The default job: does representation alignment make a small latent diffusion transformer learn faster?

``run_demo`` reads Fashion-MNIST, trains (once, cached) a small VAE so that the SiT works on 14x14x1 latents as in the
paper, caches the tokens of the offline ImageNet-pretrained teacher, trains the arms (REPA and its vanilla twin by
default; same seed, initial weights, data order and noise) for each seed, and evaluates them along training:

- a dense learning curve in a cheap in-domain metric (Frechet distance in the features of a small Fashion-MNIST
  classifier trained once inside the job, on the same noise and labels for every arm), from which the speed-up is
  read: steps vanilla needs for its final value / steps REPA needs to reach it (interpolated);
- CKNNA alignment of the SiT's hidden tokens with the teacher along training;
- TF-Inception FID (the paper's protocol) of the final samples against real test images.

Every stage is resumable: a rerun reuses the VAE, latents, tokens, classifier, reference statistics, finished
training steps and evaluations (``evaluations.json``).
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

from repa.config import ConfigError, to_dict
from repa.demo.config import TOKEN_GRID, DemoConfig, arm_config, validate_demo
from repa.demo.report import write_report
from repa.utils import atomic_write, atomic_write_text, use_all_cpus


FINAL_SAMPLES = "final_samples.npy"      # an arm's final samples (uint8), scored by the parent
INCEPTION_BATCH = 25                     # 11% faster than 50 on 2 CPU cores, the same statistics (to 1e-15)


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _json_load(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


@dataclass
class ArmRun:
    """One arm trained with one seed: its curve {step: {"fd", "cknna"}} and final TF-Inception FID."""
    arm: str
    seed: int
    run_dir: str
    curve: dict = field(default_factory=dict)
    fid: float | None = None
    train_seconds: float = 0.0
    timings: dict = field(default_factory=dict)    # seconds spent evaluating: curve_eval, inception_samples

    def to_json(self) -> dict:
        return {"curve": {str(k): v for k, v in self.curve.items()}, "fid": self.fid,
                "train_seconds": self.train_seconds, "timings": self.timings}

    @property
    def state_file(self) -> Path:
        return Path(self.run_dir) / "evaluation.json"

    def save(self) -> None:
        """Write the run's state (``evaluation.json`` in its folder) atomically."""
        atomic_write_text(self.state_file, json.dumps(self.to_json(), indent=2))


def _read_fashion_mnist(source: str) -> dict[str, np.ndarray]:
    from repa.data.idx import read_idx
    files = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
             "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}
    missing = [f for f in files.values() if not os.path.isfile(os.path.join(source, f))]
    if missing:
        raise ConfigError(f"source: {source} lacks the Fashion-MNIST file(s) {missing}; install the Debian package "
                          "(`apt-get install dataset-fashion-mnist`, done by `make demo`) or pass --source DIR")
    data = {k: np.asarray(read_idx(os.path.join(source, f))) for k, f in files.items()}
    for split in ("train", "test"):
        data[f"{split}_x"] = np.ascontiguousarray(data[f"{split}_x"][:, None])          # (N, 1, 28, 28) uint8
        data[f"{split}_y"] = data[f"{split}_y"].astype(np.int64)
    return data


def _fingerprint(data: dict[str, np.ndarray]) -> str:
    import hashlib
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(key.encode() + str(data[key].shape).encode() + data[key][:64].tobytes())
    return digest.hexdigest()[:10]


def _cached_array(path: Path, compute) -> np.ndarray:
    """``np.load(path)``, computing and saving it atomically first if absent."""
    if not path.is_file():
        array = compute()
        atomic_write(path, lambda f: np.save(f, array))
    return np.load(path, mmap_mode="r")


def _latents(vae, images: np.ndarray) -> np.ndarray:
    """Raw posterior moments stacked as (N, 2, z, s, s) float32."""
    out = [torch.stack(vae.encode_moments(images[i:i + 2000]), dim=1) for i in range(0, len(images), 2000)]
    return torch.cat(out).numpy()


def _tokens(encoder, images: np.ndarray) -> np.ndarray:
    return np.concatenate([encoder(torch.from_numpy(images[i:i + 500])).half().numpy()
                           for i in range(0, len(images), 500)])


SAMPLE_SEED = 12345     # the evaluation samples' seed: the same noise and labels for every arm and evaluation


def generate(model, vae, num: int, demo: DemoConfig, cfg_scale: float = 1.0) -> np.ndarray:
    """uint8 images (num, 1, 28, 28), samples 0..num-1 of seed ``SAMPLE_SEED`` with balanced labels, through the one
    in-process generator (``repa.generate_images``, the same images as ``repa sample``): EMA weights,
    ``demo.sampler``, ``cfg_scale`` guidance, decoded by the job's VAE."""
    from repa.evaluation.generate import generate_images
    return generate_images(model, num, seed=SAMPLE_SEED, labels="balanced", sampler=demo.sampler,
                           steps=demo.sample_steps, cfg_scale=cfg_scale, batch_size=500, decode=vae.decode)


@dataclass(frozen=True)
class Prepared:
    """Everything an arm needs, as cached files: a worker process rebuilds its inputs from these paths."""
    demo: DemoConfig
    vae_dir: str
    latent_files: tuple[str, str]           # posterior moments of the first train_images training and all test images
    token_file: str
    clf_file: str


class _ArmInputs:
    """The datasets, VAE, curve classifier, fixed noise and labels, and teacher tokens for CKNNA, loaded once per
    process from the cached files."""

    def __init__(self, prep: Prepared):
        from repa.data.memory import ArrayDataset
        from repa.demo.autoencoder import load_vae_folder
        from repa.demo.features import feature_stats, load_classifier
        from repa.encoders import load_encoder
        demo = prep.demo
        data = _read_fashion_mnist(demo.source)
        moments = {s: np.load(f, mmap_mode="r") for s, f in zip(("train", "test"), prep.latent_files)}
        self.tokens = np.load(prep.token_file, mmap_mode="r")
        n = demo.train_images
        self.train_ds = ArrayDataset(data["train_x"][:n], data["train_y"][:n], num_classes=10,
                                     latent_mean=moments["train"][:n, 0], latent_std=moments["train"][:n, 1],
                                     **{f"tokens:{demo.teacher}@28/{TOKEN_GRID}": self.tokens})
        self.test_ds = ArrayDataset(data["test_x"], data["test_y"], num_classes=10,
                                    latent_mean=moments["test"][:, 0], latent_std=moments["test"][:, 1])
        self.vae = load_vae_folder(prep.vae_dir)
        self.clf = load_classifier(prep.clf_file)
        self.clf_ref = feature_stats(self.clf, data["test_x"])
        self.align_idx = np.sort(np.random.default_rng(0).choice(len(self.test_ds), demo.align_images,
                                                                  replace=False))
        teacher = load_encoder(demo.teacher, resolution=28, token_grid=TOKEN_GRID, autocast_dtype=torch.bfloat16)
        with torch.no_grad():
            self.teacher_pooled = torch.cat([
                teacher(torch.from_numpy(data["test_x"][self.align_idx[i:i + 250]])).float().mean(dim=1)
                for i in range(0, len(self.align_idx), 250)])


_INPUTS: dict[Prepared, _ArmInputs] = {}          # per process: the inputs of the demo being run


def run_arm(prep: Prepared, arm: str, seed: int, prior: dict, *, threads: int | None = None,
            progress: bool = True) -> ArmRun:
    """Train one arm with one seed to ``demo.steps``, evaluating at ``demo.eval_steps``; resumable: finished
    evaluations (``prior`` and the run folder's ``evaluation.json``) and training steps are reused. Runs in the
    parent or in a worker process (``threads``: its torch thread count)."""
    from repa.analysis.features import extract_features
    from repa.analysis.metrics import cknna
    from repa.analysis.run import dataset_batches
    from repa.checkpoint import checkpoint_path, load_checkpoint, load_model
    from repa.demo.autoencoder import TunedDecoder, register_end_to_end_format
    from repa.demo.features import fd_domain
    from repa.training import train

    if threads is not None:
        torch.set_num_threads(threads)
    demo = prep.demo
    if prep not in _INPUTS:
        _INPUTS.clear()
        _INPUTS[prep] = _ArmInputs(prep)
    inputs = _INPUTS[prep]
    out = Path(demo.out)
    run = ArmRun(arm, seed, str(out / f"seed{seed}" / arm))
    prior = _json_load(run.state_file, prior)
    run.curve = {int(k): v for k, v in prior.get("curve", {}).items()}
    run.fid, run.train_seconds = prior.get("fid"), prior.get("train_seconds", 0.0)
    run.timings = dict(prior.get("timings", {}))
    cfg = arm_config(demo, arm, seed, run.run_dir, inputs.tokens.shape[-1])
    cfg = dataclasses.replace(cfg, e2e=dataclasses.replace(cfg.e2e, vae=prep.vae_dir))   # REPA-E's starting VAE
    register_end_to_end_format()
    log = (lambda msg: print(f"  [{arm}, seed {seed}] {msg}", flush=True)) if progress else (lambda msg: None)
    log(f"lambda {cfg.objective.proj_coeff}: {demo.steps} steps, evaluated at {demo.eval_steps}")

    def add_time(name: str, t0: float) -> None:
        run.timings[name] = run.timings.get(name, 0.0) + time.perf_counter() - t0

    final_file = Path(run.run_dir) / FINAL_SAMPLES
    for step in demo.eval_steps:
        if step in run.curve and (step != demo.steps or final_file.is_file()):
            continue
        t0 = time.perf_counter()
        train(cfg, dataset=inputs.train_ds, progress=False, stop_at_step=step, device=demo.device)
        run.train_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = load_model(checkpoint_path(run.run_dir, step), device=demo.device)
        vae, tuned = inputs.vae, cfg.objective.kind == "repa-e"      # REPA-E: decoded by its own tuned VAE
        if tuned:
            vae = TunedDecoder(inputs.vae, load_checkpoint(checkpoint_path(run.run_dir, step))["objective_state"])
        images = generate(loaded, vae, demo.curve_samples, demo)
        fd = fd_domain(inputs.clf, images, inputs.clf_ref)
        align = None          # REG needs a class token on every forward; REPA-E's latents are not the cached ones
        if not loaded.config.class_token and not tuned:
            feats = extract_features(loaded.model, dataset_batches(inputs.test_ds, inputs.align_idx, 250,
                                                                   space="latent", seed=0),
                                     t=demo.align_t, layers=(demo.encoder_depth,), project=False, seed=0)
            align = cknna(feats.pooled[demo.encoder_depth], inputs.teacher_pooled, topk=10)
        run.curve[step] = {"fd": fd, "cknna": align}
        add_time("curve_eval", t0)
        msg = f"step {step}: FD(classifier) {fd:.2f}" + ("" if align is None else f", CKNNA {align:.3f}")
        if step == demo.steps:           # scored with TF-Inception by the parent, at full thread count
            t0 = time.perf_counter()
            reuse = demo.final_samples <= demo.curve_samples and demo.cfg_scale == 1
            final = images if reuse else generate(loaded, vae, demo.final_samples, demo, demo.cfg_scale)
            final = final[:demo.final_samples]
            atomic_write(out / f"samples_{arm}_seed{seed}.npy", lambda f: np.save(f, final[:100]))
            atomic_write(final_file, lambda f: np.save(f, final))
            add_time("final_samples", t0)
        log(msg)
        run.save()
    return run


def _workers(demo: DemoConfig, jobs: int) -> tuple[int, int | None]:
    """(worker processes, torch threads per worker; None = leave the thread count alone)."""
    cores = os.cpu_count() or 1
    workers = max(1, min(demo.workers or cores, jobs))
    pinned = "OMP_NUM_THREADS" in os.environ           # a user's thread count is inherited and respected
    return workers, (None if pinned else max(1, cores // workers))


def _same_settings(a: dict, b: dict) -> bool:
    """Whether two demos' results are interchangeable: the seeds, arms, workers and device may differ, and so may
    the report folder's own path (a renamed or moved folder is reused)."""
    free = ("seeds", "arms", "workers", "device", "out")
    return {k: v for k, v in a.items() if k not in free} == {k: v for k, v in b.items() if k not in free}


def run_demo(demo: DemoConfig, *, progress: bool = True) -> Path:
    """Run the whole comparison and return the path of ``report.md``."""
    from repa.demo.autoencoder import load_vae_folder, reconstruction_error, save_vae, train_vae
    from repa.demo.features import accuracy, load_classifier, save_classifier, train_classifier
    from repa.encoders import load_encoder
    from repa.evaluation import load_inception
    from repa.evaluation.evaluate import fid_from_images, fid_note, stats_from_images

    validate_demo(demo)
    started = time.perf_counter()
    out = Path(demo.out)
    state_file = out / "evaluations.json"
    saved = _json_load(state_file, {})
    if saved.get("demo") is not None and not _same_settings(saved["demo"], to_dict(demo)):
        raise ConfigError(f"{out} holds a demo with other settings ({state_file}); use another --out or delete {out}")
    data = _read_fashion_mnist(demo.source)
    if demo.train_images > len(data["train_x"]):
        raise ConfigError(f"train_images: {demo.train_images} asked for, but {demo.source} has only "
                          f"{len(data['train_x'])} training images; pass --train-images {len(data['train_x'])} or less")
    root = Path(demo.data_root) / f"fashion-mnist-{_fingerprint(data)}"     # caches are keyed by the data itself
    inception = load_inception(device=demo.device)     # used at the end: a missing file must fail before training
    out.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    use_all_cpus()                              # all cores unless the user pinned a thread count
    log = print if progress else (lambda *a, **k: None)
    timings = saved.get("timings", {})

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return result

    _stage(f"Fashion-MNIST from {demo.source}")
    log(f"  {len(data['train_x'])} training and {len(data['test_x'])} test images, 28x28 greyscale, 10 classes")

    ae = demo.autoencoder
    vae_dir = root / f"fmnist-vae-{ae.tag}"
    size = ae.latent_size
    _stage(f"the VAE (28x28 -> {size}x{size}x{ae.latent_channels} latents), cached in {vae_dir}")
    if not (vae_dir / "model.safetensors").is_file():
        timed("vae", lambda: save_vae(train_vae(data["train_x"], ae, log=log), vae_dir))
    vae = load_vae_folder(vae_dir)
    rec_mse = reconstruction_error(vae, data["test_x"][:2000])
    log(f"  reconstruction MSE on 2000 test images: {rec_mse:.4f} (images in [-1, 1])")
    n = demo.train_images
    latent_files = (str(vae_dir / f"latents-train-first{n}.npy"), str(vae_dir / "latents-test.npy"))
    for path, images in zip(latent_files, (data["train_x"][:n], data["test_x"])):
        timed("latents", lambda p=path, x=images: _cached_array(Path(p), lambda: _latents(vae, x)))

    _stage(f"teacher tokens of {demo.teacher} ({TOKEN_GRID}x{TOKEN_GRID} grid) of the first {n} training images, "
           "cached")
    token_file = root / f"tokens-{demo.teacher}-{TOKEN_GRID}x{TOKEN_GRID}-first{n}.npy"
    if not token_file.is_file():
        teacher = load_encoder(demo.teacher, resolution=28, token_grid=TOKEN_GRID, autocast_dtype=torch.bfloat16)
        timed("tokens", lambda: _cached_array(token_file, lambda: _tokens(teacher, data["train_x"][:n])))

    _stage("the curve metric: a small Fashion-MNIST classifier (cached)")
    clf_file = root / "fmnist-classifier.safetensors"
    if not clf_file.is_file():
        timed("classifier", lambda: save_classifier(train_classifier(data["train_x"], data["train_y"]), clf_file))
    clf_acc = accuracy(load_classifier(clf_file), data["test_x"], data["test_y"])
    log(f"  test accuracy {clf_acc:.3f}; its reference statistics: all {len(data['test_x'])} test images")

    prep = Prepared(demo, str(vae_dir), latent_files, str(token_file), str(clf_file))
    jobs = [(arm, seed) for seed in demo.seeds for arm in demo.arms]
    workers, threads = _workers(demo, len(jobs))
    _stage(f"{len(jobs)} training runs (arms {', '.join(demo.arms)}; seeds {', '.join(map(str, demo.seeds))}), "
           + (f"{workers} at a time in worker processes" if workers > 1 else "one after another"))
    priors = {job: saved.get("runs", {}).get(f"{job[0]}/{job[1]}", {}) for job in jobs}
    t0 = time.perf_counter()
    if workers == 1:
        runs = [run_arm(prep, arm, seed, priors[arm, seed], progress=progress) for arm, seed in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_arm, prep, arm, seed, priors[arm, seed], threads=threads, progress=progress)
                       for arm, seed in jobs]
            runs = [f.result() for f in futures]
    timings["arms_wall"] = timings.get("arms_wall", 0.0) + time.perf_counter() - t0

    _stage(f"TF-Inception FID of the final samples against {demo.ref_images} test images (reference cached)")
    ref_file = root / f"inception-test-{demo.ref_images}.npz"
    if not ref_file.is_file():
        def compute_ref():
            stats = stats_from_images(data["test_x"][:demo.ref_images], inception, batch_size=INCEPTION_BATCH,
                                      progress=progress)
            atomic_write(ref_file, lambda f: np.savez(f, mu=stats.mu, sigma=stats.sigma))
        timed("inception_reference", compute_ref)
    ref = np.load(ref_file)
    for run in runs:
        if run.fid is None:
            t0 = time.perf_counter()
            run.fid = float(fid_from_images(np.load(Path(run.run_dir) / FINAL_SAMPLES), ref, inception,
                                            batch_size=INCEPTION_BATCH))
            run.timings["inception_samples"] = time.perf_counter() - t0
            run.save()
        log(f"  [{run.arm}, seed {run.seed}] TF-Inception FID {run.fid:.2f} ({demo.final_samples} samples)")
    note = fid_note(demo.final_samples)             # the arms compare with each other, not with FID-50K
    if note:
        log(f"  note: {note}")
    for run in runs:
        saved.setdefault("runs", {})[f"{run.arm}/{run.seed}"] = run.to_json()
    saved.update(demo=to_dict(demo), timings=timings)
    atomic_write_text(state_file, json.dumps(saved, indent=2))

    _stage("the report")
    spent = dict(timings)                       # the runs' stages are summed over the runs (parallel ones overlap)
    for run in runs:
        for key, value in {**run.timings, "training": run.train_seconds}.items():
            spent[key] = spent.get(key, 0.0) + value
    facts = {"reconstruction_mse": rec_mse, "classifier_accuracy": clf_acc, "workers": workers,
             "wall_seconds": time.perf_counter() - started, "timings": spent}
    report = write_report(demo, runs, facts)
    print(f"\nreport: {report}")
    return report
