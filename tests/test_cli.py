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
    from repa.config import validate_train
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
