"""The command line's surface: positionals named by their meaning, booleans without double negatives (old spellings
still read), each default said once, usage forms on their own lines, unknown options named alone, ``train --quiet``."""
from __future__ import annotations

import pytest

from repa.cli import main, parse_command
from tests.conftest import load_test_module


def _help(capsys, monkeypatch, *argv) -> str:
    monkeypatch.setenv("COLUMNS", "250")                # one option per line: nothing wrapped
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def _option(text: str, flag: str) -> str:
    """The help of ``flag``: its line and the next (a long flag's help starts on the next line)."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if f" {flag} " in line or f" {flag}," in line)
    return " ".join(lines[i:i + 2] if lines[i + 1].strip("│ ").startswith("-") is False else lines[i:i + 1])


@pytest.mark.parametrize("command, usage", [("sample", "CKPT"), ("sample-grid", "CKPT"), ("export", "CKPT OUT"),
                                            ("eval", "SAMPLES"), ("prepare", "[SOURCE] OUT"),
                                            ("analyze", "CKPT [CKPT ...]"), ("encoders", "[NAMES]")])
def test_positionals_are_shown_by_their_meaning(capsys, monkeypatch, command, usage):
    text = _help(capsys, monkeypatch, command)
    first = text.splitlines()[0]
    assert first.endswith(usage) or f" {usage} " in first, first
    assert " STR" not in first and "--no-no-" not in text


def test_help_says_each_default_once_and_prepare_shows_three_usage_lines(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "prepare")
    chunk = _option(text, "--chunk-size")
    assert "(default: about 64 MiB of images)" in chunk and "(default: None)" not in chunk
    assert "(default: -1)" in _option(text, "--resolution")
    usage = [line for line in text.splitlines() if line.lstrip("- ").startswith("repa prepare")]
    assert len(usage) == 3 and usage[2].lstrip("- ").startswith("repa prepare --verify OUT"), usage
    assert "--hash, --no-hash" in text
    assert "--cache, --no-cache" in _help(capsys, monkeypatch, "eval")
    device = _option(_help(capsys, monkeypatch, "sample"), "--device")
    assert "else cpu" in device and "(default: None)" not in device


@pytest.mark.parametrize("argv, expected", [([], True), (["--hash"], True), (["--no-hash"], False),
                                            (["--hash", "false"], False), (["--hash=no"], False),
                                            (["--no-hash", "true"], False), (["--no-hash", "false"], True),
                                            (["--no_hash=false"], True)])
def test_prepare_hash_takes_every_spelling_and_the_old_negative_one(argv, expected):
    assert parse_command("prepare", ["--verify", "d", *argv]).prepare.hash is expected


@pytest.mark.parametrize("argv, expected", [([], True), (["--cache"], True), (["--no-cache"], False),
                                            (["--cache", "0"], False), (["--no-cache", "true"], False),
                                            (["--no-cache", "false"], True)])
def test_eval_cache_takes_every_spelling(argv, expected):
    assert parse_command("eval", ["s.npz", "--ref", "r.npz", *argv]).cache is expected


def test_an_unknown_option_is_named_without_its_value(capsys):
    assert main(["sample", "c.pt", "--num", "3", "--out", "o", "--max-stepz", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "repa sample: error: unrecognized option --max-stepz; did you mean: --steps?; see repa sample --help"
    assert main(["train", "--max-stepz", "10", "--fooo", "--dry-run"]) == 2
    assert "unrecognized options --max-stepz --fooo; did you mean: --max-steps?" in capsys.readouterr().err


@pytest.mark.parametrize("argv, quiet", [([], False), (["--quiet"], True), (["--no-quiet"], False),
                                         (["--quiet", "false"], False), (["--quiet=true"], True)])
def test_train_quiet_resolves(argv, quiet):
    assert parse_command("train", ["--preset", "fmnist-REPA", *argv]).quiet is quiet


def test_train_quiet_prints_no_progress_bar_but_the_final_line(capsys, tmp_path):
    from repa.config import to_json
    helpers = load_test_module("test_reliability.py")
    from repa.data.prepare import prepare_dataset
    data = prepare_dataset(str(helpers._image_folder(tmp_path / "src")), str(tmp_path / "ds"), resolution=8,
                           channels=1, num_workers=0, progress=False)
    (tmp_path / "c.json").write_text(to_json(helpers._config(tmp_path / "unused", data, max_steps=2)))
    outputs = {}
    for flag in ("--no-quiet", "--quiet"):
        assert main(["train", "--config", str(tmp_path / "c.json"), "--run-dir", str(tmp_path / flag), flag]) == 0
        outputs[flag] = capsys.readouterr()
    assert "step/s" in outputs["--no-quiet"].err or "2/2" in outputs["--no-quiet"].err   # tqdm's bar
    assert outputs["--quiet"].err == ""
    assert "finished at step 2" in outputs["--quiet"].out


def test_loading_the_vae_and_inception_shows_no_library_deprecation_warnings(monkeypatch, tmp_path):
    """diffusers' `local_dir_use_symlinks` and torch's `torch.jit.load` warnings are filtered around those calls only."""
    import warnings

    from repa.autoencoder import load_vae
    from repa.evaluation.inception import default_inception_path, load_inception
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FileNotFoundError):
            load_vae("someone/not-cached-vae")
        if default_inception_path() is not None:
            load_inception()
        warnings.warn("still shown", UserWarning)               # other warnings are not silenced
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "local_dir_use_symlinks" in m or "torch.jit.load" in m], messages
    assert "still shown" in messages


def test_wandb_options_reach_wandb_init(tmp_path):
    """Entity, run name, tags and project from the flags (tags also as a,b) are the keywords wandb.init gets."""
    import dataclasses
    import json

    from repa.config import TrainConfig, from_dict, to_json
    from repa.logging_config import wandb_init_kwargs
    cfg = parse_command("train", ["--preset", "fmnist-REPA", "--wandb", "--wandb-run.entity", "lab",
                                  "--wandb-run.name", "repa-b2-lambda05", "--wandb-run.tags", "repa,ablation",
                                  "--wandb-run.project", "REPA", "--run-dir", str(tmp_path / "r")]).train
    kwargs = wandb_init_kwargs(cfg)
    assert (kwargs["project"], kwargs["entity"], kwargs["name"], kwargs["tags"]) == (
        "REPA", "lab", "repa-b2-lambda05", ["repa", "ablation"])
    assert kwargs["config"]["wandb_run"]["entity"] == "lab" and kwargs["resume"] == "allow"
    default = wandb_init_kwargs(parse_command("train", ["--preset", "fmnist-REPA", "--run-dir", "runs/x"]).train)
    assert (default["project"], default["entity"], default["name"], default["tags"]) == ("repa", None, "x", [])
    assert parse_command("train", ["--wandb-run.no-images"]).train.wandb_run.images is False
    assert from_dict(TrainConfig, json.loads(to_json(cfg))) == cfg                     # saved and read back
    old = json.loads(to_json(cfg))
    del old["wandb_run"]                                                               # a config.json from before
    assert from_dict(TrainConfig, old).wandb_run == dataclasses.replace(cfg.wandb_run, entity=None, name=None,
                                                                        tags=(), project="repa")
