"""Issue 32, items 1-2: the model name decides the architecture; config sources compose in one order (preset, file,
flags; positionals are flags); derived fields follow overrides; every invalid field is reported at once."""
import dataclasses
import json

import pytest

import repa
from repa.cli import main
from repa.config import ConfigError, ModelConfig, TrainConfig, to_json
from repa.config_validate import validate_train
from repa.model_names import name_of, parse_name
from repa.models import MODELS, model_config
from repa.presets import PRESETS, get_preset


def _dry_run(capsys, *argv):
    assert main(["train", *argv, "--dry-run"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _error(capsys, command, *argv):
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _size(cfg):
    m = cfg["model"]
    return m["name"], m["depth"], m["hidden_size"], m["num_heads"], m["patch_size"]


# ---- the name decides ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, size", [
    (["--model.name", "SiT-XL/2"], ("SiT-XL/2", 28, 1152, 16, 2)),              # the name's size, not the preset's
    (["--model.name", "SiT-B/4"], ("SiT-B/4", 12, 768, 12, 4)),
    (["--model.name", "SiT-6x128/1"], ("SiT-6x128/1", 6, 128, 2, 1)),          # a custom size (the demo's style)
    (["--model.depth", "6", "--model.hidden-size", "128"], ("SiT-6x128/2", 6, 128, 2, 2)),   # renamed; heads follow
    (["--model.name", "SiT-XL/2", "--model.depth", "6"], ("SiT-6x1152/2", 6, 1152, 16, 2)),  # explicit size wins
    (["--model.name", "SiT-XL/2", "--model.depth", "12"], ("SiT-12x1152/2", 12, 1152, 16, 2)),  # even the old value
    (["--model.name", "SiT-XL/2", "--model.num-heads", "8"], ("SiT-XL/2", 28, 1152, 8, 2)),
    (["--model.patch-size", "4"], ("SiT-B/4", 12, 768, 12, 4)),
    (["--model.name", "SiT-B/2"], ("SiT-B/2", 12, 768, 12, 2)),
])
def test_the_model_name_decides_the_size(capsys, argv, size):
    cfg = _dry_run(capsys, "--preset", "SiT-B/2-REPA-256", *argv)
    assert _size(cfg) == size
    assert cfg["model"]["encoder_dims"] == [768] and cfg["objective"]["kind"] == "interpolant"


def test_a_file_name_decides_and_flags_override_it(capsys, tmp_path):
    (tmp_path / "f.yaml").write_text("model:\n  name: SiT-XL/2\n")
    assert _size(_dry_run(capsys, "--preset", "SiT-B/2-REPA-256", "--config", str(tmp_path / "f.yaml"))) == (
        "SiT-XL/2", 28, 1152, 16, 2)
    got = _dry_run(capsys, "--preset", "SiT-B/2-REPA-256", "--config", str(tmp_path / "f.yaml"), "--model.depth", "4")
    assert _size(got) == ("SiT-4x1152/2", 4, 1152, 16, 2)
    (tmp_path / "g.yaml").write_text("model:\n  name: SiT-XL/2\n  depth: 6\n")          # the file's own size wins
    assert _size(_dry_run(capsys, "--preset", "SiT-B/2-REPA-256", "--config", str(tmp_path / "g.yaml")))[:3] == (
        "SiT-6x1152/2", 6, 1152)


@pytest.mark.parametrize("name", ["SiT-Q/3", "SiT-XL/3", "SiT-XL", "Foo-B/2", "SiT-0x128/2", "sit-b/2"])
def test_an_unknown_name_is_refused_in_one_line(capsys, name):
    err = _error(capsys, "train", "--preset", "SiT-B/2-REPA-256", "--model.name", name, "--dry-run")
    assert f"unknown model {name!r}" in err and "SiT-XL/2" in err and "<depth>x<width>" in err
    with pytest.raises(ConfigError, match="unknown model"):
        model_config(name)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"did you mean 'SiT-XL/\d'"):
        parse_name("SiT-XL/3")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registry_name_parses_to_its_entry(name):
    parts = parse_name(name)
    assert {k: parts[k] for k in ("depth", "hidden_size", "num_heads", "patch_size")} == {
        k: MODELS[name][k] for k in ("depth", "hidden_size", "num_heads", "patch_size")}
    cfg = model_config(name)
    assert cfg.name == name == name_of(cfg)


def test_model_config_names_size_overrides():
    assert model_config("SiT-B/2", depth=10).name == "SiT-10x768/2"
    with pytest.raises(ConfigError, match="model.hidden_size.*; model.encoder_depth"):
        model_config("SiT-B/2", depth=6, hidden_size=130)           # every problem at once
    cfg = model_config("SiT-S/2", depth=12, hidden_size=768)
    assert (cfg.name, cfg.num_heads) == ("SiT-B/2", 12)           # a paper size is named as such; heads follow
    assert model_config("SiT-6x256/2", encoder_depth=2).num_heads == 4
    assert model_config("SiT-6x256/2", encoder_depth=2, num_heads=8).num_heads == 8
    dit = model_config("DiT-XL/2")
    assert (dit.learn_sigma, dit.prediction) == (True, "epsilon")


def test_a_name_that_does_not_say_what_the_model_is_is_refused():
    cfg = TrainConfig(model=ModelConfig(name="SiT-XL/2"))        # the dataclass default size is B
    with pytest.raises(ConfigError, match="name it 'SiT-B/2'"):
        validate_train(cfg)
    validate_train(TrainConfig(model=model_config("SiT-XL/2")))


# ---- the family decides the objective ---------------------------------------------------------------------------------

def test_a_dit_name_trains_the_improved_ddpm_objective(capsys):
    cfg = _dry_run(capsys, "--preset", "SiT-B/2-REPA-256", "--model.name", "DiT-S/2")
    assert (cfg["model"]["learn_sigma"], cfg["model"]["prediction"], cfg["objective"]["kind"]) == (
        True, "epsilon", "iddpm")
    assert _size(cfg) == ("DiT-S/2", 12, 384, 6, 2)
    back = _dry_run(capsys, "--preset", "DiT-B/2-REPA-256", "--model.name", "SiT-B/2")
    assert (back["model"]["learn_sigma"], back["model"]["prediction"], back["objective"]["kind"]) == (
        False, "velocity", "interpolant")
    # given explicitly, a DiT trained as a velocity network is what was asked for
    explicit = _dry_run(capsys, "--preset", "SiT-B/2-REPA-256", "--model.name", "DiT-S/2", "--objective.kind",
                        "interpolant", "--model.prediction", "velocity", "--model.learn-sigma", "false")
    assert (explicit["model"]["learn_sigma"], explicit["model"]["prediction"], explicit["objective"]["kind"]) == (
        False, "velocity", "interpolant")


@pytest.mark.parametrize("size, depth, encoder_depth", [("B", 12, 4), ("XL", 28, 8)])
@pytest.mark.parametrize("arm, coeff", [("REPA", 0.5), ("vanilla", 0.0)])
def test_dit_presets(capsys, size, depth, encoder_depth, arm, coeff):
    name = f"DiT-{size}/2-{arm}-256"
    assert name in PRESETS
    cfg = _dry_run(capsys, "--preset", name)
    assert (cfg["model"]["name"], cfg["model"]["depth"], cfg["model"]["encoder_depth"]) == (
        f"DiT-{size}/2", depth, encoder_depth)
    assert (cfg["objective"]["kind"], cfg["model"]["prediction"], cfg["model"]["learn_sigma"]) == (
        "iddpm", "epsilon", True)
    assert cfg["objective"]["proj_coeff"] == coeff and cfg["objective"]["time_sampling"] == "uniform"
    # the preset is DIT.md's four-flag recipe in one flag
    recipe = _dry_run(capsys, "--preset", f"SiT-{size}/2-{arm}-256", "--model.name", f"DiT-{size}/2",
                      "--model.learn-sigma", "--model.prediction", "epsilon", "--objective.kind", "iddpm")
    assert {k: v for k, v in recipe.items() if k != "run_dir"} == {k: v for k, v in cfg.items() if k != "run_dir"}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_named_for_what_it_is(name):
    m = get_preset(name).model
    assert m.name == name_of(m)
    # the text-to-image presets carry the family only (MMDiT-REPA-COCO-256: the reference's one MMDiT size)
    assert name.startswith(m.name + "-") or name.startswith("fmnist") or name.startswith(m.family + "-")


# ---- derived fields follow overrides ----------------------------------------------------------------------------------

def test_sra_on_a_small_model_is_valid_in_one_go(capsys):
    from repa.training import check_config
    cfg = _dry_run(capsys, "--preset", "SiT-B/2-SRA-256", "--model.depth", "6", "--model.hidden-size", "128")
    assert cfg["model"]["encoder_dims"] == [128] and cfg["model"]["name"] == "SiT-6x128/2"
    assert cfg["model"]["encoder_depth"] < cfg["objective"]["self_depth"] <= 6
    xl = _dry_run(capsys, "--preset", "SiT-B/2-SRA-256", "--model.name", "SiT-XL/2", "--model.encoder-depth", "8")
    assert (xl["model"]["encoder_dims"], xl["objective"]["self_depth"]) == ([1152], 19)   # 8/12 of 28 blocks
    given = _dry_run(capsys, "--preset", "SiT-B/2-SRA-256", "--model.depth", "6", "--objective.self-depth", "6")
    assert given["objective"]["self_depth"] == 6
    check_config(repa.config.from_dict(TrainConfig, cfg))


def test_haste_blocks_follow_the_encoder_depth(capsys):
    cfg = _dry_run(capsys, "--preset", "SiT-XL/2-HASTE-256", "--model.encoder-depth", "3")
    assert (cfg["objective"]["attn_layers"], cfg["objective"]["attn_teacher_layers"]) == ([1, 2, 3], [10, 11, 12])
    cfg = _dry_run(capsys, "--preset", "SiT-XL/2-HASTE-256", "--model.encoder-depth", "6")
    assert (cfg["objective"]["attn_layers"], cfg["objective"]["attn_teacher_layers"]) == ([3, 4, 5, 6],
                                                                                          [9, 10, 11, 12])
    cfg = _dry_run(capsys, "--preset", "SiT-XL/2-HASTE-256", "--model.encoder-depth", "6", "--objective.attn-layers",
                   "1,2,3,4")
    assert cfg["objective"]["attn_layers"] == [1, 2, 3, 4]


def test_encoder_widths_follow_the_teachers_unless_given(capsys, tmp_path):
    assert _dry_run(capsys, "--preset", "SiT-B/2-REPA-256", "--encoders", "dinov2-vit-l")["model"]["encoder_dims"] == [1024]
    (tmp_path / "t.yaml").write_text("encoders: [dinov2-vit-l, dinov2-vit-s]\n")
    got = _dry_run(capsys, "--preset", "SiT-B/2-REPA-256", "--config", str(tmp_path / "t.yaml"))
    assert got["model"]["encoder_dims"] == [1024, 384]


# ---- sources compose: preset, then file, then flags ------------------------------------------------------------------

def test_preset_then_file_then_flags_through_the_module_entry(tmp_path):
    import subprocess
    import sys
    (tmp_path / "tiny.yaml").write_text("max_steps: 11\noptim:\n  lr: 0.002\n")
    done = subprocess.run([sys.executable, "-m", "repa", "train", "--preset", "fmnist-REPA", "--config",
                           str(tmp_path / "tiny.yaml"), "--optim.lr", "3e-4", "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cfg, preset = json.loads(done.stdout), get_preset("fmnist-REPA")
    assert cfg["model"]["name"] == preset.model.name and cfg["data"]["resolution"] == 28     # the preset stays
    assert cfg["max_steps"] == 11 and cfg["optim"]["lr"] == 3e-4                          # file, then flags


def test_sample_takes_a_positional_checkpoint_with_a_config_file(capsys, tmp_path):
    """``repa sample CKPT --config F``: the file's values (flag names, flat) over the defaults, flags over the file;
    the positional checkpoint is a flag. The checkpoint's stored name is from before names were derived."""
    import numpy as np
    from tests.conftest import tiny_model_config
    from repa.checkpoint import FORMAT, FORMAT_VERSION, atomic_torch_save
    from repa.models import build_model
    model = build_model(tiny_model_config())
    old = TrainConfig(model=dataclasses.replace(model.config, name="SiT-S/2"), encoders=("patch-teacher",))
    state = model.state_dict()
    atomic_torch_save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": to_json(old), "model": state,
                       "ema": state, "steps": 0}, tmp_path / "old.pt")
    assert repa.load_model(tmp_path / "old.pt").config.name == "SiT-3x32/2"    # loads, named for what it is
    (tmp_path / "s.yaml").write_text("sampler: euler\nsteps: 2\nnum_samples: 3\nseed: 5\n")
    out = tmp_path / "out"
    assert main(["sample", str(tmp_path / "old.pt"), "--config", str(tmp_path / "s.yaml"), "--out", str(out),
                 "--seed", "7"]) == 0
    record = json.loads((out / "settings.json").read_text())
    assert (record["settings"]["sampler"], record["settings"]["steps"], record["settings"]["num"]) == ("euler", 2, 3)
    assert record["settings"]["seed"] == 7 and record["model"]["name"] == "SiT-3x32/2"
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].shape[0] == 3
    (tmp_path / "c.yaml").write_text(f"checkpoint: {tmp_path / 'nowhere.pt'}\nnum_samples: 1\n")
    from repa.cli import parse_command
    opts = parse_command("sample", [str(tmp_path / "old.pt"), "--config", str(tmp_path / "c.yaml"), "--out", "o"])
    assert opts.checkpoint == str(tmp_path / "old.pt")                        # the positional over the file
    assert parse_command("sample", ["--config", str(tmp_path / "c.yaml"), "--out", "o"]).checkpoint.endswith(
        "nowhere.pt")
    capsys.readouterr()
    err = _error(capsys, "sample", "CKPT", "--config", str(tmp_path / "s.yaml"), "--out", "o", "--stepz", "2")
    assert "--steps" in err


def test_a_file_key_of_an_unknown_option_lists_the_flag_names(capsys, tmp_path):
    (tmp_path / "s.yaml").write_text("stepz: 2\n")
    err = _error(capsys, "sample", "CKPT", "--config", str(tmp_path / "s.yaml"), "--out", "o", "--num", "1")
    assert "stepz" in err and "'steps'" in err and "s.yaml" in err


# ---- every problem at once --------------------------------------------------------------------------------------------

def test_every_invalid_field_is_reported_at_once(capsys):
    err = _error(capsys, "train", "--preset", "fmnist-REPA", "--model.encoder-depth", "40", "--optim.beta1", "1.5",
                 "--global-batch-size", "6", "--grad-accum-steps", "4", "--encoders", "no-such-net", "--dry-run")
    for field in ("model.encoder_depth", "optim.beta1", "grad_accum_steps", "no-such-net"):
        assert field in err, field
    assert err.count("; ") >= 3
    err = _error(capsys, "train", "--preset", "SiT-B/2-REPA-256", "--model.name", "SiT-Q/3", "--optim.lr", "0",
                 "--dry-run")
    assert "unknown model 'SiT-Q/3'" in err and "optim.lr" in err


def test_every_type_error_is_reported_at_once(capsys, tmp_path):
    (tmp_path / "f.yaml").write_text("max_steps: -3\nseed: -1\nmodel:\n  depth: 0\n")
    err = _error(capsys, "train", "--preset", "fmnist-REPA", "--config", str(tmp_path / "f.yaml"), "--dry-run")
    assert "max_steps" in err and "seed" in err and "model.depth" in err


@pytest.mark.parametrize("command, argv, text, check", [
    ("analyze", ["z.pt", "--data", "d"], "checkpoints: [x.pt, y.pt]\nlayers: [1, 2]\nt: 0.25\n",
     lambda o: o.checkpoints == ("z.pt",) and o.settings.layers == (1, 2) and o.settings.t == 0.25),
    ("analyze", [], "checkpoints: [x.pt, y.pt]\ndata: d\nsettings:\n  topk: 3\n",
     lambda o: o.checkpoints == ("x.pt", "y.pt") and o.settings.topk == 3),
    ("prepare", ["src", "out"], "paths: [a, b]\nresolution: 64\nhflip: true\n",
     lambda o: o.paths == ("src", "out") and o.prepare.resolution == 64 and o.prepare.hflip is True),
    ("sample-grid", ["c.pt", "--steps", "4"], "steps: 9\nsampler: heun\nnum: 2\n",
     lambda o: o.checkpoint == "c.pt" and (o.sampling.steps, o.sampling.sampler, o.num) == (4, "heun", 2)),
])
def test_every_command_composes_file_then_flags_and_positionals(tmp_path, command, argv, text, check):
    from repa.cli import parse_command
    (tmp_path / "f.yaml").write_text(text)
    assert check(parse_command(command, [*argv, "--config", str(tmp_path / "f.yaml")]))


def test_a_file_with_every_section_still_composes_with_the_preset(capsys, tmp_path):
    """A hand-written file with the four sections is not a whole run config: the preset's other fields stay."""
    (tmp_path / "tiny.yaml").write_text("model: {depth: 4}\nobjective: {proj_coeff: 0.25}\noptim: {lr: 0.001}\n"
                                        "data: {path: d}\nmax_steps: 5\n")
    cfg, preset = _dry_run(capsys, "--preset", "fmnist-REPA", "--config", str(tmp_path / "tiny.yaml")), \
        get_preset("fmnist-REPA")
    assert (cfg["model"]["name"], cfg["model"]["hidden_size"], cfg["model"]["in_channels"]) == ("SiT-4x256/2", 256, 1)
    assert cfg["encoders"] == list(preset.encoders) and cfg["global_batch_size"] == preset.global_batch_size
    assert (cfg["objective"]["proj_coeff"], cfg["optim"]["lr"], cfg["data"]["path"]) == (0.25, 0.001, "d")
    old = json.loads(to_json(preset))                                 # a run's config.json, in the old layout
    old["objective"]["prediction"] = old["model"].pop("prediction")
    (tmp_path / "run.json").write_text(json.dumps(old))
    assert _dry_run(capsys, "--config", str(tmp_path / "run.json")) == json.loads(to_json(preset))
