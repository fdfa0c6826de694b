"""The interfaces a user meets: public names vs submodules, typed commands (one style, help, typos, config files),
sample-grid on latent models with a cached decoder, offline behaviour, export -> load_model / torch.hub / Hub ids."""
from __future__ import annotations

import json
import logging
import os
import pkgutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import repa
from repa.cli import main, parse_command
from repa.config import SampleConfig, TrainConfig, from_dict
from tests.conftest import tiny_model_config, tiny_train_config

REPO = Path(__file__).resolve().parents[1]


def _one_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"repa {command}: error: "), err
    return lines[0]


# ---- 1: no public name is a submodule's ------------------------------------------------------------------------------

def test_no_public_name_collides_with_a_submodule():
    submodules = {m.name for m in pkgutil.iter_modules(repa.__path__)}
    assert not set(repa.__all__) & submodules, set(repa.__all__) & submodules


@pytest.mark.parametrize("first", ["import repa.training", "import repa.checkpoint, repa.samplers, repa.config"])
def test_repa_train_is_the_function_whatever_was_imported_before(first):
    code = (f"{first}\nimport repa\nfor _ in range(3):\n    assert callable(repa.train) and "
            "repa.train.__name__ == 'train', repa.train\n    import repa.training\n"
            "assert callable(repa.sample) and callable(repa.load_model)\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ---- 2: one command style from typed configs --------------------------------------------------------------------------

def _dry(capsys, *argv) -> TrainConfig:
    assert main(["train", "--preset", "SiT-B/2-REPA-256", *argv, "--dry-run"]) == 0
    return from_dict(TrainConfig, json.loads(capsys.readouterr().out))


def test_train_flags_take_hyphens_and_the_old_underscores(capsys):
    new = _dry(capsys, "--max-steps", "7", "--model.encoder-depth", "3", "--optim.lr", "2e-4", "--no-tensorboard")
    old = _dry(capsys, "--max_steps", "7", "--model.encoder_depth", "3", "--optim.lr", "2e-4", "--tensorboard", "false")
    assert new == old and new.max_steps == 7 and new.model.encoder_depth == 3 and not new.tensorboard
    assert _dry(capsys, "--encoders", "dinov2-vit-b,clip-vit-L").encoders == ("dinov2-vit-b", "clip-vit-L")
    assert _dry(capsys, "--encoders", "dinov2-vit-b", "clip-vit-L").model.encoder_dims == (768, 1024)


def test_a_mistyped_flag_is_one_line_with_a_suggestion(capsys):
    assert main(["train", "--max-stepz", "3", "--dry-run"]) == 2
    line = _one_line(capsys.readouterr().err, "train")
    assert "--max-stepz" in line and "did you mean: --max-steps" in line
    assert main(["sampel"]) == 2
    assert "did you mean 'sample'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needles", [
    (["train", "--preset", "SiT-B/2-REPA-256"], ["--max-steps INT", "optimizer steps of the whole run",
                                                 "(default: 400000)", "--precision {fp32,bf16,fp16}",
                                                 "--model.encoder-depth INT", "(default: 4)"]),
    (["sample"], ["--sampler {auto,euler,heun,sde,ddpm}", "(default: 250)", "--cfg-scale FLOAT", "(default: 1.0)"]),
    (["sample-grid"], ["--vae", "--which {ema,model}", "--sampler", "--device"]),
    (["eval"], ["--cache-dir", "--logits"]),
    (["export"], ["--which {ema,model}"]),
    (["demo"], ["--seeds INT", "--first-seed INT", "--steps INT"]),
])
def test_help_shows_defaults_descriptions_and_choices(capsys, monkeypatch, argv, needles):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    for needle in needles:
        assert needle in out, (needle, out[:3000])


def test_version_and_top_level_help(capsys):
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"repa {repa.__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "sample-grid", "export", "analyze"))


def test_yaml_and_json_config_files(capsys, tmp_path):
    (tmp_path / "train.yaml").write_text("max_steps: 11\nmodel:\n  encoder_depth: 2\n")
    cfg = _dry(capsys, "--config", str(tmp_path / "train.yaml"), "--optim.lr", "3e-4")
    assert (cfg.max_steps, cfg.model.encoder_depth, cfg.optim.lr) == (11, 2, 3e-4)
    (tmp_path / "grid.json").write_text(json.dumps({"checkpoint": "c.pt", "steps": 9, "sampler": "heun"}))
    flat = parse_command("sample-grid", ["--config", str(tmp_path / "grid.json")])   # by its flag name (--steps)...
    (tmp_path / "grid.yaml").write_text("checkpoint: c.pt\nnum: 4\nsampling:\n  steps: 9\n  sampler: heun\n")
    opts = parse_command("sample-grid", ["--config", str(tmp_path / "grid.yaml"), "--steps", "5"])
    assert opts.checkpoint == "c.pt" and opts.num == 4 and opts.sampling == SampleConfig(sampler="heun", steps=5)
    assert flat.sampling == SampleConfig(sampler="heun", steps=9)                     # ...or in its section
    (tmp_path / "bad.yaml").write_text("sampling: [1, 2\n")
    assert main(["sample-grid", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "bad.yaml" in _one_line(capsys.readouterr().err, "sample-grid")


def test_sample_config_is_shared_with_documented_defaults():
    defaults = parse_command("sample", ["c.pt", "--num", "1", "--out", "o"]).sampling
    assert defaults == SampleConfig() == parse_command("sample-grid", ["c.pt"]).sampling
    from repa.samplers import auto_sampler
    assert (auto_sampler("velocity"), auto_sampler("epsilon")) == ("sde", "ddpm")
    assert (SampleConfig().steps, SampleConfig().cfg_scale) == (250, 1.0)


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_package_is_a_config_error(capsys):
    assert main(["train", "--preset", "SiT-B/2-REPA-256", "--wandb", "--dry-run"]) == 2
    assert "pip install wandb" in _one_line(capsys.readouterr().err, "train")


# ---- 3: sample-grid on latent models, a cached decoder ----------------------------------------------------------------

@pytest.fixture(scope="module")
def latent_checkpoint(tmp_path_factory):
    """A reference-layout checkpoint of a tiny latent SiT (4 x 4 x 4 latents, 2 classes)."""
    from repa.models import build_model
    torch.manual_seed(0)
    model = build_model(tiny_model_config(space="latent", in_channels=4, input_size=4, num_classes=2,
                                          encoder_dims=(16,)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("latent") / "latent.pt"
    import argparse
    torch.save({"ema": model.state_dict(), "model": model.state_dict(), "steps": 3,
                "args": argparse.Namespace(encoder_depth=2, num_classes=2)}, path)
    return path


def test_sample_grid_decodes_latent_models_with_the_given_vae(capsys, tmp_path, latent_checkpoint, tiny_vae_dir):
    from PIL import Image
    out = tmp_path / "grid.png"
    argv = ["sample-grid", str(latent_checkpoint), "--out", str(out), "--num", "4", "--steps", "2",
            "--sampler", "euler", "--vae", str(tiny_vae_dir), "--device", "cpu", "--which", "model"]
    assert main(argv) == 0, capsys.readouterr().err
    assert Image.open(out).size[0] > 8                            # 8 x 8 decoded images in a grid
    assert main([*argv[:-4], "--vae", str(tmp_path / "missing-vae")]) == 2
    assert "missing-vae" in _one_line(capsys.readouterr().err, "sample-grid")


def test_the_decoder_is_loaded_once_and_diffusers_does_not_warn(tiny_vae_dir, caplog):
    from repa.autoencoder import cached_vae
    with caplog.at_level(logging.WARNING):
        first = cached_vae(str(tiny_vae_dir), "cpu")
    assert cached_vae(str(tiny_vae_dir), "cpu") is first
    assert "accelerate" not in caplog.text


# ---- 4: offline ---------------------------------------------------------------------------------------------------

def test_hub_ids_fail_fast_and_say_how_to_use_a_folder_offline(monkeypatch, tmp_path):
    from repa.autoencoder import load_vae
    from repa.offline import hub_is_reachable
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert not hub_is_reachable()
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        load_vae("someone/not-cached-vae")
    assert time.perf_counter() - start < 20
    assert "HF_HUB_OFFLINE" in str(info.value) and "--vae DIR" in str(info.value)
    with pytest.raises(FileNotFoundError, match="local folder|DIR"):
        repa.load_model("someone/not-cached-model")


# ---- 6: export, folders, Hub ids, torch.hub ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory):
    import numpy as np

    from repa.data.memory import ArrayDataset
    from repa.training import train
    from tests.conftest import PatchTeacher
    rng = np.random.default_rng(0)
    data = ArrayDataset((rng.random((16, 1, 8, 8)) * 255).astype(np.uint8), rng.integers(0, 3, 16), num_classes=3)
    cfg = tiny_train_config(tmp_path_factory.mktemp("run") / "r", max_steps=2, ckpt_every=2, log_every=1)
    return Path(train(cfg, dataset=data, encoders=[PatchTeacher(4, 16)], progress=False).checkpoint)


def _outputs(loaded):
    torch.manual_seed(1)
    c = loaded.config
    x = torch.randn(2, c.in_channels, c.input_size, c.input_size)
    with torch.no_grad():
        return loaded.model.forward_features(x, torch.rand(2), torch.tensor([0, 1]), project=True)


def test_export_round_trip_gives_identical_outputs(capsys, tmp_path, run_checkpoint):
    assert main(["export", str(run_checkpoint), str(tmp_path / "exported")]) == 0
    folder = tmp_path / "exported"
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json"}
    meta = json.loads((folder / "config.json").read_text())
    assert meta["weights"] == "ema" and meta["step"] == 2 and meta["train_config"]["max_steps"] == 2
    original, exported = repa.load_model(run_checkpoint), repa.load_model(folder)
    assert exported.train_config == original.train_config and exported.step == 2
    a, b = _outputs(original), _outputs(exported)
    assert torch.count_nonzero(a.prediction) and torch.equal(a.prediction, b.prediction)
    assert torch.equal(a.projected[0], b.projected[0])
    with pytest.raises(ValueError, match="ema"):
        repa.load_model(folder, which="model")
    hub = torch.hub.load(str(REPO), "repa_model", str(folder), source="local", trust_repo=True)
    torch.manual_seed(1)
    assert torch.equal(_outputs(repa.checkpoint.as_loaded(hub)).prediction, a.prediction)


def test_a_hub_id_is_read_through_huggingface_hub_offline(monkeypatch, tmp_path, run_checkpoint):
    """A Hub repository in the local cache (the layout huggingface_hub writes), read with HF_HUB_OFFLINE=1."""
    from repa.checkpoint import export_model
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-repa" / "snapshots" / ("a" * 40)
    export_model(run_checkpoint, snapshot)
    (cache / "models--someone--tiny-repa" / "refs").mkdir()
    (cache / "models--someone--tiny-repa" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = repa.load_model("someone/tiny-repa")
    assert torch.equal(_outputs(loaded).prediction, _outputs(repa.load_model(run_checkpoint)).prediction)


def test_a_bare_state_dict_does_not_silently_guess_the_projector_block(tmp_path, latent_checkpoint):
    state = torch.load(latent_checkpoint, weights_only=False)["ema"]
    torch.save(state, tmp_path / "bare.pt")
    with pytest.warns(UserWarning, match="does not record which block"):
        repa.load_model(tmp_path / "bare.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert repa.load_model(tmp_path / "bare.pt", encoder_depth=2).config.encoder_depth == 2
    with pytest.raises(ValueError, match="encoder_depth"):
        repa.load_model(tmp_path / "bare.pt", encoder_depth=9)


def test_demo_options_are_built_from_demo_config():
    import dataclasses

    from repa.demo import DemoConfig
    opts = parse_command("demo", ["--seeds", "3", "--first-seed", "2", "--arms", "repa,vanilla", "--steps", "10"])
    assert (opts.seeds, opts.first_seed, opts.arms, opts.steps) == (3, 2, ("repa", "vanilla"), 10)
    defaults = parse_command("demo", [])
    for f in dataclasses.fields(DemoConfig):
        if f.name != "seeds":
            assert getattr(defaults, f.name) == getattr(DemoConfig(), f.name), f.name
