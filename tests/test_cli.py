"""The command line: dry runs print a config that round-trips; bad values name the field."""
import json
import subprocess
import sys

import pytest

from repa.cli import main
from repa.config import TrainConfig, from_dict
from repa.presets import PRESETS, get_preset


def test_dry_run_prints_config_that_round_trips(capsys):
    assert main(["train", "--preset", "SiT-XL/2-REPA-256", "--model.encoder_depth", "6", "--optim.lr", "2e-4",
                 "--encoders", "dinov2-vit-b", "--dry-run"]) == 0
    cfg = from_dict(TrainConfig, json.loads(capsys.readouterr().out))
    assert cfg.model.encoder_depth == 6 and cfg.optim.lr == 2e-4 and cfg.model.depth == 28
    assert cfg.encoders == ("dinov2-vit-b",)
    assert cfg == from_dict(TrainConfig, json.loads(json.dumps(json.loads(
        __import__("repa.config", fromlist=["to_json"]).to_json(cfg)))))


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp8"], "precision"),
    (["--model.encoder_depth", "40"], "model.encoder_depth"),
    (["--objective.path", "spiral"], "objective.path"),
    (["--global_batch_size", "many"], "--global-batch-size"),
    (["--max-stepz", "3"], "did you mean: --max-steps"),
    (["--preset", "SiT-XXL/2"], "unknown preset"),
])
def test_bad_values_name_the_field(capsys, args, message):
    assert main(["train", *args, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid(name):
    from repa.config_validate import validate_train
    validate_train(get_preset(name))


def test_paper_presets_match_the_paper():
    cfg = get_preset("SiT-XL/2-REPA-256")
    assert (cfg.model.depth, cfg.model.hidden_size, cfg.model.encoder_depth, cfg.objective.proj_coeff) == (28, 1152, 8, 0.5)
    assert cfg.global_batch_size == 256 and cfg.optim.lr == 1e-4 and cfg.ema_decay == 0.9999
    assert get_preset("SiT-XL/2-vanilla-256").objective.proj_coeff == 0
    assert get_preset("SiT-XL/2-REPA-512").model.input_size == 64


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "repa", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "train" in done.stdout


# ---- booleans, config sources, errors (issue 27, part 4) -----------------------------------------------------------

def _dry_run(capsys, *argv):
    assert main(["train", "--preset", "fmnist-REPA", *argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv, fast", [
    ([], False), (["--fast"], True), (["--no-fast"], False), (["--fast", "false"], False), (["--fast", "true"], True),
    (["--fast=false"], False), (["--fast=True"], True), (["--fast", "--no-fast"], False),
])
def test_fast_means_what_it_says(capsys, argv, fast):
    cfg = _dry_run(capsys, *argv)
    assert (cfg["precision"], cfg["optim"]["fused"], cfg["compile"]) == (("bf16", True, True) if fast else
                                                                         ("fp32", True, False))
    from repa.cli import parse_command
    assert parse_command("train", ["--preset", "fmnist-REPA", *argv]).fast is fast


def test_explicit_flags_win_over_the_fast_path(capsys):
    cfg = _dry_run(capsys, "--fast", "--precision", "fp32", "--compile", "false", "--optim.fused", "false")
    assert (cfg["precision"], cfg["optim"]["fused"], cfg["compile"]) == ("fp32", False, False)
    cfg = _dry_run(capsys, "--precision", "fp32", "--fast")              # the order does not matter
    assert (cfg["precision"], cfg["compile"]) == ("fp32", True)


@pytest.mark.parametrize("flag", ["--tensorboard", "--optim.fused", "--data.use-token-cache", "--wandb"])
def test_every_boolean_takes_every_spelling(flag):
    from repa.cli import parse_command
    section, _, name = flag[2:].rpartition(".")
    negative = f"--{section}{'.' if section else ''}no-{name}"

    def value(*argv):
        cfg = parse_command("train", ["--preset", "fmnist-REPA", *argv]).train
        return getattr(getattr(cfg, section) if section else cfg, name.replace("-", "_"))
    for argv, expected in (([flag], True), ([negative], False), ([flag, "true"], True), ([flag, "false"], False),
                           ([f"{flag}=false"], False), ([f"{flag}=TRUE"], True), ([flag, "0"], False)):
        assert value(*argv) is expected, argv


def test_preset_then_file_then_flags(capsys, tmp_path):
    (tmp_path / "f.yaml").write_text("max_steps: 11\nmodel:\n  encoder_depth: 3\noptim:\n  lr: 0.002\n")
    cfg = _dry_run(capsys, "--config", str(tmp_path / "f.yaml"), "--optim.lr", "3e-4")
    preset = get_preset("fmnist-REPA")
    assert cfg["model"]["name"] == preset.model.name and cfg["model"]["depth"] == preset.model.depth   # the preset
    assert (cfg["max_steps"], cfg["model"]["encoder_depth"]) == (11, 3)                            # the file over it
    assert cfg["optim"]["lr"] == 3e-4                                                              # flags over both
    (tmp_path / "run.json").write_text(__import__("repa.config", fromlist=["to_json"]).to_json(preset))
    assert _dry_run(capsys, "--config", str(tmp_path / "run.json"), "--fast")["precision"] == "bf16"


def test_a_bad_config_file_value_is_one_line(capsys, tmp_path):
    (tmp_path / "f.yaml").write_text("max_steps: many\n")
    assert main(["train", "--config", str(tmp_path / "f.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "f.yaml" in err and "max_steps" in err


def test_a_plain_value_error_is_a_bug_and_keeps_its_traceback(monkeypatch):
    from repa.commands import PresetsCommand

    def broken(opts):
        raise ValueError("an internal inconsistency")
    monkeypatch.setattr(PresetsCommand, "run", broken)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["presets"])


def test_eval_dinov2_alone_means_default():
    from repa.cli import parse_command
    assert parse_command("eval", ["s.npz", "--ref", "r.npz", "--dinov2"]).dinov2 == "default"
    assert parse_command("eval", ["s.npz", "--ref", "r.npz", "--dinov2", "my/dir"]).dinov2 == "my/dir"
    assert parse_command("eval", ["s.npz", "--ref", "r.npz"]).dinov2 is None
