"""The default job end to end in a tiny configuration, its speed-up arithmetic, and the arms' configs."""
import dataclasses
import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch

from repa.demo import DemoConfig, run_demo
from repa.demo.autoencoder import AutoencoderConfig
from repa.demo.config import ARMS, FASHION_MNIST, arm_config, validate_demo
from repa.demo.speedup import speedup, steps_to_reach


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _small_fashion_mnist(folder, num_train, num_test):
    """The first items of the real Fashion-MNIST files, rewritten as IDX files (same format, fewer items)."""
    from repa.data.idx import read_idx
    for split, n in (("train", num_train), ("t10k", num_test)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte.gz"
            _write_idx(folder / name, np.ascontiguousarray(read_idx(f"{FASHION_MNIST}/{name}")[:n]))


def test_steps_to_reach_interpolates_first_crossing():
    curve = [(100, 80.0), (200, 50.0), (400, 30.0)]
    assert math.isclose(steps_to_reach(curve, 40.0), 300.0)           # 50 -> 30 between 200 and 400
    assert steps_to_reach(curve, 90.0) == 100.0                         # reached at the first evaluation
    assert steps_to_reach(curve, 10.0) is None
    # a later dip below the target does not count twice: the first crossing is taken
    assert math.isclose(steps_to_reach([(100, 60.0), (200, 40.0), (300, 45.0), (400, 35.0)], 50.0), 150.0)


def test_speedup_against_the_baselines_final_value():
    vanilla = [(100, 90.0), (200, 70.0), (300, 50.0), (400, 40.0)]
    assert math.isclose(speedup([(100, 60.0), (200, 40.0), (400, 20.0)], vanilla), 2.0)
    assert speedup([(100, 95.0), (400, 41.0)], vanilla) is None
    assert math.isclose(speedup(vanilla, vanilla), 1.0)
    # a noisy baseline that reached its final value earlier is credited with that earlier step
    noisy = [(100, 90.0), (200, 40.0), (300, 45.0), (400, 40.0)]
    assert math.isclose(speedup([(100, 40.0)], noisy), 2.0)


def test_report_command_reproduces_the_settings():
    import shlex
    from repa.demo.report import demo_command
    assert demo_command(DemoConfig()) == "make demo  (or: repa demo)"
    demo = DemoConfig(seeds=(2, 3), arms=("repa", "irepa", "vanilla"), steps=500, cfg_scale=2.0,
                      autoencoder=AutoencoderConfig(steps=300, kl_weight=1e-3))
    command = demo_command(demo)
    assert command.startswith("repa demo --seeds 2 --first-seed 2 --arms repa,irepa,vanilla ")
    for flag in ("--steps 500", "--cfg-scale 2.0", "--autoencoder.steps=300", "--autoencoder.kl-weight=0.001"):
        assert flag in command
    # the command parses back to the same settings
    from repa.cli import parse_command
    parsed = parse_command("demo", shlex.split(command)[2:])
    assert (parsed.seeds, parsed.first_seed, parsed.arms, parsed.steps, parsed.cfg_scale, parsed.autoencoder) == \
        (2, 2, demo.arms, 500, 2.0, demo.autoencoder)
    # seeds that are not consecutive: one command per run of consecutive seeds
    assert demo_command(DemoConfig(seeds=(1, 2, 5))) == "repa demo --seeds 2 && repa demo --seeds 1 --first-seed 5"


def test_median_speedup_ranks_never_lowest():
    from repa.demo.report import _median_with_never
    assert _median_with_never([None, 1.07, 1.10]) == 1.07
    assert _median_with_never([None, None, 1.5]) is None
    assert _median_with_never([1.0, 2.0, None, 3.0]) == 1.5
    assert _median_with_never([2.0, 4.0]) == 3.0


def test_arms_differ_only_in_their_objective_fields():
    from repa.config import diff
    demo = DemoConfig()
    configs = {arm: arm_config(demo, arm, 1, f"runs/x/{arm}", 112) for arm in ARMS}
    expected = {"repa": set(), "vanilla": {"objective.proj_coeff"},
                "irepa": {"model.projector", "objective.target_norm"},
                "sra": {"encoders", "model.encoder_dims", "model.projector", "objective.target", "objective.self_depth",
                        "objective.self_loss"},
                "reg": {"model.class_token"},
                "repa-e": {"objective.kind", "e2e.perceptual", "e2e.disc_layers", "e2e.disc_channels"},
                "repa-e-noalign": {"objective.kind", "e2e.perceptual", "e2e.disc_layers", "e2e.disc_channels",
                                   "e2e.vae_align_proj_coeff"}}
    assert set(configs) == set(expected)
    for arm, cfg in configs.items():
        changed = set(diff(configs["repa"], cfg)) - {"run_dir"}
        assert changed == expected[arm], arm
    assert configs["vanilla"].objective.proj_coeff == 0 and configs["repa"].objective.proj_coeff == demo.proj_coeff
    assert configs["repa-e-noalign"].e2e.vae_align_proj_coeff == 0 and configs["repa-e"].e2e.vae_align_proj_coeff > 0
    model = configs["repa"].model
    assert model.name == f"SiT-{demo.depth}x{demo.width}/2"     # a custom size, named as such
    # 14x14 latents with patch 2: the SiT's token grid is the teacher's 7x7 grid
    assert (model.input_size, model.patch_size, model.in_channels) == (14, 2, demo.autoencoder.latent_channels)


@pytest.mark.parametrize("factor", [2, 4])
def test_vae_shapes_scaling_and_saved_folder(tmp_path, factor):
    import torch
    from repa.autoencoder import LATENT_SCALE
    from repa.demo.autoencoder import TinyVAE, load_vae_folder, save_vae, train_vae
    from repa.data.idx import read_idx
    images = np.ascontiguousarray(read_idx(f"{FASHION_MNIST}/t10k-images-idx3-ubyte.gz")[:256, None])
    cfg = AutoencoderConfig(factor=factor, width=8, steps=3, batch_size=16, decoder_steps=2)
    vae = train_vae(images, cfg, log=None)
    mean, std = vae.encode_moments(images)
    size = 28 // factor
    assert mean.shape == std.shape == (256, cfg.latent_channels, size, size) and cfg.latent_size == size
    assert (std > 0).all()
    # the multiplier makes the scaled posterior means of the (training) images unit-variance
    assert abs((mean * LATENT_SCALE).std().item() - 1.0) < 0.05
    decoded = vae.decode(mean * LATENT_SCALE)
    assert decoded.shape == (256, 1, 28, 28) and decoded.dtype == torch.uint8
    save_vae(vae, tmp_path / "vae")
    again = load_vae_folder(tmp_path / "vae")
    assert torch.equal(again.decode(mean * LATENT_SCALE), decoded)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]       # no temporary folder left
    with pytest.raises(ValueError, match="factor"):
        TinyVAE(AutoencoderConfig(factor=3))


def test_decoder_finetune_moves_the_decoder_only():
    import torch
    from repa.demo.autoencoder import train_vae
    from repa.data.idx import read_idx
    images = np.ascontiguousarray(read_idx(f"{FASHION_MNIST}/t10k-images-idx3-ubyte.gz")[:256, None])
    plain = AutoencoderConfig(width=8, steps=3, batch_size=16, decoder_steps=0)
    tuned = dataclasses.replace(plain, decoder_steps=3)
    no_adv = dataclasses.replace(tuned, adv_weight=0.0)
    a, b, c = (train_vae(images, cfg, log=None) for cfg in (plain, tuned, no_adv))
    # the encoder and the latent multiplier, so the latent space the SiT learns, do not move
    assert all(torch.equal(x, y) for x, y in zip(a.encoder.state_dict().values(), b.encoder.state_dict().values()))
    assert torch.equal(a.multiplier, b.multiplier)
    # the decoder does, and the adversarial term changes how it moves
    assert not torch.equal(a.decoder[0].weight, b.decoder[0].weight)
    assert not torch.equal(b.decoder[0].weight, c.decoder[0].weight)
    # the discriminator is not part of the saved model, and the cache folder's name tells the phases apart
    assert set(a.state_dict()) == set(b.state_dict())
    assert len({plain.tag, tuned.tag, no_adv.tag}) == 3 and "dec3adv0.1" in tuned.tag


def test_demo_settings_are_checked_before_any_work(tmp_path):
    from repa.config import ConfigError
    with pytest.raises(ConfigError, match="arms"):
        validate_demo(DemoConfig(arms=("repa", "nonsense")))
    with pytest.raises(ConfigError, match="seeds"):
        validate_demo(DemoConfig(seeds=(1, 1)))
    with pytest.raises(ConfigError, match="autoencoder.factor"):
        validate_demo(DemoConfig(autoencoder=AutoencoderConfig(factor=3)))
    with pytest.raises(ConfigError, match="autoencoder.decoder_steps"):
        validate_demo(DemoConfig(autoencoder=AutoencoderConfig(adv_weight=-0.1)))
    with pytest.raises(ConfigError, match="Fashion-MNIST"):
        run_demo(DemoConfig(source=str(tmp_path), out=str(tmp_path / "o"), data_root=str(tmp_path / "d")))
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(600)
def test_tiny_demo_end_to_end(tmp_path):
    from repa.config import ConfigError
    source = tmp_path / "fmnist"
    source.mkdir()
    _small_fashion_mnist(source, 512, 96)
    demo = DemoConfig(out=str(tmp_path / "demo"), data_root=str(tmp_path / "data"), source=str(source),
                      seeds=(1,), arms=("repa", "vanilla", "irepa", "sra", "reg"), depth=4, width=32, heads=2,
                      projector_dim=32, steps=4, batch_size=16,
                      autoencoder=AutoencoderConfig(steps=4, batch_size=16, width=8, decoder_steps=2),
                      curve_points=2, curve_samples=24, final_samples=24, ref_images=24, sample_steps=2,
                      align_images=24, workers=2, train_images=400)
    with pytest.raises(ConfigError, match="train_images: 513 .* only 512 training images"):
        run_demo(dataclasses.replace(demo, train_images=513), progress=False)
    report = run_demo(demo, progress=False)
    out = tmp_path / "demo"
    tokens = list((tmp_path / "data").glob("*/tokens-*-first400.npy"))
    assert len(tokens) == 1 and np.load(tokens[0]).shape[0] == 400      # the teacher ran on the subset only
    text = report.read_text()
    for name in ("curve.png", "alignment.png", "losses.png", "samples_repa.png", "samples_vanilla.png",
                 "samples_irepa.png", "samples_sra.png", "samples_reg.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"({name})" in text
    saved = json.loads((out / "evaluations.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert set(saved["runs"]) == {"repa/1", "vanilla/1", "irepa/1", "sra/1", "reg/1"}
    for key, run in saved["runs"].items():
        assert sorted(map(int, run["curve"])) == demo.eval_steps
        assert all(math.isfinite(v["fd"]) for v in run["curve"].values())
        assert all(-1 <= v["cknna"] <= 1 if not key.startswith("reg") else v["cknna"] is None
                   for v in run["curve"].values())
        assert math.isfinite(run["fid"]) and run["fid"] > 0
    # the report's figures are the metrics file's: per-seed speed-ups recomputed from the saved curves
    for seed in (1,):
        curve = lambda arm: [(int(s), v["fd"]) for s, v in saved["runs"][f"{arm}/{seed}"]["curve"].items()]  # noqa
        expected = speedup(curve("repa"), curve("vanilla"))
        got = summary["arms"]["repa"]["speedup"][str(seed)]
        assert (got is None and expected is None) or math.isclose(got, expected)
        fid = saved["runs"][f"vanilla/{seed}"]["fid"]
        assert f"| {seed} | vanilla |  | {curve('vanilla')[-1][1]:.2f} | {fid:.2f} |" in text
    assert "17.5x" in text and "SiT-XL/2" in text
    assert "one seed pair" in text
    # the arms of one seed start from identical weights and see identical data: their step-1 losses are equal
    first = {arm: json.loads((out / "seed1" / arm / "metrics.jsonl").read_text().splitlines()[0])
             for arm in demo.arms}
    assert math.isclose(first["repa"]["denoise_loss"], first["vanilla"]["denoise_loss"], rel_tol=1e-5)
    assert "irepa vs vanilla" in text and "sra vs vanilla" in text and "reg vs vanilla" in text

    # the parent scores each arm's saved final samples against the cached reference statistics
    from repa.evaluation import load_inception
    from repa.evaluation.evaluate import stats_from_images
    from repa.evaluation.fid import frechet_distance
    ref = np.load(next((tmp_path / "data").glob("*/inception-test-24.npz")))
    stats = stats_from_images(np.load(out / "seed1" / "vanilla" / "final_samples.npy"), load_inception())
    assert math.isclose(frechet_distance(stats.mu, stats.sigma, ref["mu"], ref["sigma"]),
                        saved["runs"]["vanilla/1"]["fid"], rel_tol=1e-6)

    # a rerun reuses everything: no training, same numbers; the worker count may differ (here: in-process). A run
    # stopped after sampling but before its FID (here: the FID removed) is scored without retraining.
    before = (out / "evaluations.json").read_text()
    for state in (out / "evaluations.json", out / "seed1" / "vanilla" / "evaluation.json"):
        edited = json.loads(state.read_text())
        (edited["runs"]["vanilla/1"] if "runs" in edited else edited)["fid"] = None
        state.write_text(json.dumps(edited))
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    run_demo(dataclasses.replace(demo, workers=1), progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == mtimes      # no checkpoint rewritten
    after = json.loads((out / "evaluations.json").read_text())["runs"]
    assert after.keys() == json.loads(before)["runs"].keys()
    for key, run in json.loads(before)["runs"].items():
        assert after[key]["curve"] == run["curve"] and math.isclose(after[key]["fid"], run["fid"], rel_tol=1e-6)
    # a renamed report folder is reused as it is: nothing retrained, the same results
    moved = tmp_path / "renamed"
    out.rename(moved)
    checkpoint_times = lambda: {p.relative_to(moved): p.stat().st_mtime_ns for p in moved.rglob("*.pt")}  # noqa
    mtimes = checkpoint_times()
    run_demo(dataclasses.replace(demo, out=str(moved)), progress=False)
    assert checkpoint_times() == mtimes
    assert json.loads((moved / "evaluations.json").read_text())["runs"] == after
    # other settings in the same folder are refused, naming the folder
    with pytest.raises(ConfigError, match="other settings"):
        run_demo(dataclasses.replace(demo, out=str(moved), steps=8), progress=False)


@pytest.mark.slow
def test_tiny_demo_repa_e_arm(tmp_path):
    """REPA-E's arm in the tiny job: it tunes the job's VAE (its checkpoint holds it, changed), its samples are
    decoded by that VAE and scored, the report compares it with vanilla."""
    from repa.checkpoint import load_checkpoint
    from repa.demo.autoencoder import load_vae_folder
    source = tmp_path / "fmnist"
    source.mkdir()
    _small_fashion_mnist(source, 512, 96)
    demo = DemoConfig(out=str(tmp_path / "demo"), data_root=str(tmp_path / "data"), source=str(source),
                      seeds=(1,), arms=("repa-e", "vanilla"), depth=4, width=32, heads=2, projector_dim=32, steps=4,
                      batch_size=16, autoencoder=AutoencoderConfig(steps=4, batch_size=16, width=8, decoder_steps=2),
                      curve_points=2, curve_samples=24, final_samples=24, ref_images=24, sample_steps=2,
                      align_images=24, workers=1, train_images=400)
    text = run_demo(demo, progress=False).read_text()
    out = tmp_path / "demo"
    run = json.loads((out / "evaluations.json").read_text())["runs"]["repa-e/1"]
    assert math.isfinite(run["fid"]) and all(math.isfinite(v["fd"]) and v["cknna"] is None
                                             for v in run["curve"].values())
    assert "repa-e vs vanilla" in text and (out / "samples_repa-e.png").stat().st_size > 1000
    assert "- repa-e (REPA-E" in text and "alignment weight on the VAE side 1.5" in text and "no LPIPS" in text
    tuned = load_checkpoint(out / "seed1" / "repa-e" / "checkpoints" / f"{demo.steps:08d}.pt")["objective_state"]
    start = load_vae_folder(next((tmp_path / "data").glob("*/fmnist-vae-*"))).state_dict()
    assert any(not torch.equal(v, tuned["vae"][f"vae.{k}"]) for k, v in start.items())
    first = json.loads((out / "seed1" / "repa-e" / "metrics.jsonl").read_text().splitlines()[0])
    assert "vae_align_loss" in first and "disc_loss" in first


def test_report_over_seeds_is_consistent_with_the_runs(tmp_path):
    """Three seeds: per-seed speed-ups, their median and range, and the band plot come from the runs given."""
    from repa.demo.pipeline import ArmRun
    from repa.demo.report import write_report
    demo = DemoConfig(out=str(tmp_path), seeds=(1, 2, 3), steps=400, curve_points=4)
    rng = np.random.default_rng(0)
    runs = []
    for seed in demo.seeds:
        for arm, rate in (("repa", 2.0 + seed / 4), ("vanilla", 1.0)):
            curve = {s: {"fd": 100.0 / (1 + rate * s / 100) + rng.random(), "cknna": 0.1 * rate} for s in
                     demo.eval_steps}
            runs.append(ArmRun(arm, seed, str(tmp_path / f"seed{seed}" / arm), curve=curve, fid=40.0 / rate,
                               train_seconds=60.0 * seed * rate))
    report = write_report(demo, runs, {"reconstruction_mse": 0.03, "classifier_accuracy": 0.9, "wall_seconds": 60.0,
                                       "timings": {}})
    text = report.read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    per_seed = []
    for seed in demo.seeds:
        curves = {r.arm: [(s, v["fd"]) for s, v in sorted(r.curve.items())] for r in runs if r.seed == seed}
        expected = speedup(curves["repa"], curves["vanilla"])
        assert math.isclose(summary["arms"]["repa"]["speedup"][str(seed)], expected)
        assert f"| {seed} | repa | {expected:.2f}x |" in text
        row = next(line for line in text.splitlines() if line.startswith(f"| {seed} | repa |"))
        assert row.endswith(f"| {seed * (2.0 + seed / 4):.1f} min |")              # training time, from the run
        per_seed.append(expected)
    assert math.isclose(summary["arms"]["repa"]["speedup_median"], float(np.median(per_seed)))
    assert f"**{np.median(per_seed):.2f}x** median over 3 seeds" in text.splitlines()[2]   # the headline comes first
    assert "repa demo --seeds 3" in text
    assert "Final TF-Inception FID (1000 samples, classifier-free guidance 1.5, against 2000 test images)" in text
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_missing_inception_fails_before_anything_is_trained(tmp_path, monkeypatch):
    """The FID network is needed only at the end: without it the job stops at once and writes nothing."""
    import repa.evaluation.inception as inception
    monkeypatch.setattr(inception, "default_inception_path", lambda: None)
    source = tmp_path / "fmnist"
    source.mkdir()
    _small_fashion_mnist(source, 64, 32)
    demo = DemoConfig(out=str(tmp_path / "demo"), data_root=str(tmp_path / "data"), source=str(source),
                      train_images=64)
    with pytest.raises(FileNotFoundError, match="Inception weights for FID were not found; install"):
        run_demo(demo, progress=False)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "data").exists()
