"""Reliability as an adversarial user meets it: every user error is one line and a non-zero exit, a failed start
leaves nothing behind, one writer per folder, no stale temporary files, corruption is refused, Ctrl-C / SIGTERM
checkpoint and exit 130 / 143, metrics agree with the checkpoint after a resume, odd images are scaled."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repa.checkpoint import CheckpointError, atomic_torch_save, latest_checkpoint, list_checkpoints, load_checkpoint
from repa.cli import main
from repa.config import to_json
from tests.conftest import tiny_model_config, tiny_train_config

REPO = Path(__file__).resolve().parents[1]


# ---- fixtures: a prepared 8x8 greyscale dataset, a vanilla config for it, one checkpoint -----------------------------

def _image_folder(root: Path, n_per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8), mode="L").save(root / f"class{c}/{i}.png")
    return root


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from repa.data.prepare import prepare_dataset
    base = tmp_path_factory.mktemp("data")
    return Path(prepare_dataset(str(_image_folder(base / "src")), str(base / "ds"), resolution=8, channels=1,
                                num_workers=0, progress=False))


def _config(run_dir, data: Path, **overrides):
    cfg = tiny_train_config(run_dir, max_steps=4, log_every=2, ckpt_every=2, encoders=(),
                            model=tiny_model_config(num_classes=2, encoder_dims=()))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)),
                              objective=dataclasses.replace(cfg.objective, proj_coeff=0.0))
    return dataclasses.replace(cfg, **overrides)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, dataset_dir):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(to_json(_config("unused", dataset_dir)))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, dataset_dir):
    from repa.training import train
    run = tmp_path_factory.mktemp("ckpt") / "run"
    return Path(train(_config(run, dataset_dir, max_steps=2), progress=False).checkpoint)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _cli(capsys, argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


PROGRESS_BAR = re.compile(r"^[^:]*:\s+\d+%\|")       # tqdm lines (training shows its progress on stderr)


def _assert_one_line_error(code: int, err: str, command: str, *needles: str, expect_code: int | None = None):
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
    assert code != 0 and (expect_code is None or code == expect_code), (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"repa {command}: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _evil_pickle(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"weight": Evil()}, path)
    return path


# ---- 1 + 2: user errors are one line, and a failed first start writes nothing ----------------------------------------

def _user_error_cases():
    """(name, argv builder(ctx) -> list, expected code, words the message must hold)."""
    cuda = torch.cuda.is_available()
    return [
        ("prepare-out-is-file", lambda c: ["prepare", c.src, c.file], 2, ["is a file"]),
        ("prepare-chunk-size", lambda c: ["prepare", c.src, c.tmp / "new", "--chunk-size", "-3"], 2,
         ["--chunk-size"]),
        ("train-run-dir-is-file", lambda c: ["train", "--config", c.cfg, "--run_dir", c.file], 2, ["is a file"]),
        ("train-malformed-config", lambda c: ["train", "--config", c.bad_json], 2, ["bad.json", "not valid JSON"]),
        ("train-config-missing", lambda c: ["train", "--config", c.tmp / "nope.json"], 2, ["nope.json"]),
        ("train-resolution", lambda c: ["train", "--config", c.cfg, "--run_dir", c.tmp / "r1",
                                        "--model.input-size", "16"], 2, ["--model.input-size 8"]),
        ("train-channels", lambda c: ["train", "--config", c.cfg, "--run_dir", c.tmp / "r2",
                                      "--model.in-channels", "3"], 2, ["--model.in-channels 1"]),
        ("train-labels", lambda c: ["train", "--config", c.cfg, "--run_dir", c.tmp / "r3",
                                    "--model.num-classes", "1"], 2, ["labels 0..1", "--model.num-classes 2"]),
        ("train-data-resolution", lambda c: ["train", "--config", c.cfg, "--run_dir", c.tmp / "r4",
                                             "--data.resolution", "16"], 2, ["--data.resolution 8"]),
        ("train-truncated-shard", lambda c: ["train", "--config", c.cfg, "--run_dir", c.tmp / "r5",
                                             "--data.path", c.truncated], 2, ["image/000000.npy"]),
        ("train-device", lambda c: ["train", "--config", c.cfg, "--run_dir", c.tmp / "r6", "--device", "cuda:0"],
         2, ["CUDA"] if not cuda else ["device"]),
        ("train-device-name", lambda c: ["train", "--config", c.cfg, "--run_dir", c.tmp / "r7", "--device", "gpu"],
         2, ["not a device"]),
        ("sample-out-is-file", lambda c: ["sample", c.ckpt, "--num", "2", "--out", c.file, "--steps", "2"], 2,
         ["is a file"]),
        ("sample-bad-checkpoint", lambda c: ["sample", c.file, "--num", "2", "--out", c.tmp / "s1"], 2,
         ["cannot read checkpoint"]),
        ("sample-evil-checkpoint", lambda c: ["sample", c.evil, "--num", "2", "--out", c.tmp / "s2"], 2,
         ["not a weights-only file", "system", "nothing in it was executed"]),
        ("sample-grid-num", lambda c: ["sample-grid", c.ckpt, "--num", "0", "--out", c.tmp / "g.png"], 2,
         ["--num"]),
        ("sample-grid-out-is-dir", lambda c: ["sample-grid", c.ckpt, "--out", c.tmp, "--steps", "2"], 2,
         ["is a folder"]),
        ("analyze-out-is-file", lambda c: ["analyze", c.ckpt, "--data", c.data, "--out", c.file], 2,
         ["is a file"]),
        ("eval-batch-size", lambda c: ["eval", c.samples, "--ref", c.data, "--batch-size", "0"], 2,
         ["--batch-size"]),
        ("eval-out-under-file", lambda c: ["eval", c.samples, "--ref", c.data, "--out", c.file / "m.json"], 2,
         ["is a file"]),
        ("eval-evil-logits", lambda c: ["eval", c.samples, "--ref", c.data, "--logits", c.evil], 2,
         ["not a weights-only file", "system", "nothing in it was executed"]),
        ("eval-list-logits", lambda c: ["eval", c.samples, "--ref", c.data, "--logits", c.listfile], 2,
         ["not a state dict"]),
    ]


@pytest.fixture
def ctx(tmp_path, dataset_dir, config_file, checkpoint):
    c = type("Ctx", (), {})()
    c.tmp, c.data, c.cfg, c.ckpt = tmp_path, dataset_dir, config_file, checkpoint
    c.src = _image_folder(tmp_path / "src", n_per_class=2)
    c.file = tmp_path / "a-file"
    c.file.write_text("x")
    c.bad_json = tmp_path / "bad.json"
    c.bad_json.write_text('{"model": {"depth": 3,,}')
    c.truncated = tmp_path / "truncated"
    import shutil
    shutil.copytree(dataset_dir, c.truncated)
    shard = c.truncated / "image" / "000000.npy"
    shard.write_bytes(shard.read_bytes()[:200])
    c.samples = tmp_path / "samples.npz"
    np.savez(c.samples, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    c.marker = tmp_path / "PWNED"
    c.evil = _evil_pickle(tmp_path / "evil.pt", c.marker)
    c.listfile = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], c.listfile)
    return c


@pytest.mark.parametrize("name, make_argv, code, needles", _user_error_cases(), ids=[c[0] for c in _user_error_cases()])
def test_user_errors_are_one_line_and_leave_nothing(capsys, ctx, name, make_argv, code, needles):
    argv = make_argv(ctx)
    before = _files(ctx.tmp)
    got, err = _cli(capsys, argv)
    _assert_one_line_error(got, err, argv[0], *needles, expect_code=code)
    assert _files(ctx.tmp) == before, f"left behind: {_files(ctx.tmp) - before}"
    assert not ctx.marker.exists()


def test_debug_flag_shows_the_traceback(ctx):
    with pytest.raises(ValueError, match="--chunk-size"):
        main(["--debug", "prepare", str(ctx.src), str(ctx.tmp / "new"), "--chunk-size", "-3"])


def test_malicious_encoder_weights_are_refused_by_name(tmp_path):
    from repa.encoders.base import EncoderWeightsError
    from repa.encoders.efficientnet_lite import load_efficientnet_lite
    marker = tmp_path / "PWNED"
    with pytest.raises(EncoderWeightsError, match=r"not a weights-only file.*system.*nothing in it was executed"):
        load_efficientnet_lite("lite0", weights=str(_evil_pickle(tmp_path / "evil.pth", marker)))
    assert not marker.exists()


def test_non_finite_training_is_one_line(capsys, tmp_path, config_file):
    got, err = _cli(capsys, ["train", "--config", config_file, "--run_dir", tmp_path / "run",
                             "--optim.lr", "1e38", "--optim.grad_clip", "0"])
    _assert_one_line_error(got, err, "train", "non-finite training at step", expect_code=1)


def test_a_failed_first_start_does_not_block_the_corrected_rerun(capsys, tmp_path, config_file, dataset_dir):
    run = tmp_path / "run"
    got, err = _cli(capsys, ["train", "--config", config_file, "--run_dir", run, "--model.input-size", "16"])
    assert got == 2 and not run.exists()
    # a claim without any finished work (config.json, no checkpoint) does not block other settings either
    run.mkdir()
    (run / "config.json").write_text(to_json(_config(run, dataset_dir, seed=5)))
    assert main(["train", "--config", str(config_file), "--run_dir", str(run), "--max_steps", "2"]) == 0
    assert [s for s, _ in list_checkpoints(run)] == [2]


def test_prepare_plan_without_finished_chunks_does_not_block(tmp_path):
    from repa.data.prepare import prepare_dataset
    src = _image_folder(tmp_path / "src", n_per_class=3)
    out = tmp_path / "ds"
    (out / ".progress").mkdir(parents=True)
    (out / ".progress" / "plan.json").write_text(json.dumps({"chunk_size": -3}))
    prepare_dataset(str(src), str(out), resolution=8, channels=1, num_workers=0, progress=False)
    assert (out / "manifest.json").is_file() and not (out / ".progress").exists() and not (out / ".lock").exists()


def test_sample_settings_without_finished_batches_do_not_block(tmp_path, checkpoint):
    from repa.evaluation.generate import sample_to_npz
    out = tmp_path / "s"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"settings": {"num": 99}}))
    (out / ".samples.npz.tmp999999999").write_bytes(b"partial")        # a dead writer's file
    sample_to_npz(str(checkpoint), str(out), num=2, steps=2, sampler="euler", cfg_scale=1.0, batch_size=2,
                  progress=False)
    assert sorted(os.listdir(out)) == ["grid.png", "samples.npz", "settings.json"]       # no empty shards/


# ---- 3: no leftovers -------------------------------------------------------------------------------------------------

def test_stale_temp_files_of_dead_writers_are_removed_on_the_next_start(tmp_path, dataset_dir):
    from repa.training import train
    run = tmp_path / "run"
    train(_config(run, dataset_dir, max_steps=2), progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [run / "checkpoints" / f".00000004.pt.tmp-{dead.pid}",
             run / "checkpoints" / f"..00000004.pt.tmp-{dead.pid}.tmp-{dead.pid}", run / f".config.json.tmp-{dead.pid}"]
    for path in stale:
        path.write_bytes(b"partial")
    live = run / "checkpoints" / f".00000004.pt.tmp-{os.getppid()}"     # a live writer's file is not touched
    live.write_bytes(b"in progress")
    train(_config(run, dataset_dir, max_steps=4), progress=False)
    assert not any(p.exists() for p in stale) and live.exists()


def test_sample_grid_cleans_its_stale_temp_file_and_leaves_none(capsys, tmp_path, checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".grid.png.tmp-999999999").write_bytes(b"partial")
    assert main(["sample-grid", str(checkpoint), "--out", "grid.png", "--num", "4", "--steps", "2"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["grid.png"]


# ---- 4: one writer per folder ----------------------------------------------------------------------------------------

HOLD = ("import sys, time; sys.path.insert(0, {repo!r}); from repa.runlock import claim_folder\n"
        "with claim_folder(sys.argv[1], 'run'):\n    print('held', flush=True); time.sleep(60)")


def _hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO)), str(folder)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("command", ["train", "prepare", "sample"])
def test_a_second_writer_is_refused_with_the_holders_pid(capsys, tmp_path, config_file, checkpoint, command):
    folder = tmp_path / "out"
    holder = _hold_lock(folder)
    try:
        argv = {"train": ["train", "--config", config_file, "--run_dir", folder],
                "prepare": ["prepare", _image_folder(tmp_path / "src", 2), folder, "--resolution", "8"],
                "sample": ["sample", checkpoint, "--num", "2", "--out", folder, "--steps", "2"]}[command]
        got, err = _cli(capsys, argv)
        _assert_one_line_error(got, err, command, f"pid {holder.pid}", "in use", expect_code=1)
        assert sorted(os.listdir(folder)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # the OS released the lock of the killed holder: the same command now runs
    if command == "train":
        assert main([str(a) for a in argv]) == 0 and not (folder / ".lock").exists()


# ---- 5: metrics agree with the checkpoint after a resume -------------------------------------------------------------

def test_metrics_are_truncated_to_the_resumed_step(tmp_path, dataset_dir, capsys):
    from repa.training import train
    full = _config(tmp_path / "full", dataset_dir, max_steps=8, log_every=1, ckpt_every=4)
    train(full, progress=False)
    cfg = dataclasses.replace(full, run_dir=str(tmp_path / "run"))
    train(cfg, progress=False, stop_at_step=6)
    (tmp_path / "run" / "checkpoints" / "00000006.pt").unlink()     # killed before its checkpoint at 6
    train(cfg, progress=False)
    assert "resumed from step 4 (checkpoint" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


# ---- 6: corruption never passes silently -----------------------------------------------------------------------------

def test_a_flipped_byte_is_caught_without_the_sidecar(tmp_path):
    path = tmp_path / "00000001.pt"
    atomic_torch_save({"format": "repa-checkpoint", "ema": {"w": torch.arange(4096.0)}}, path)
    path.with_name(path.name + ".sha256").unlink()
    data = bytearray(path.read_bytes())
    offset = bytes(data).find(torch.arange(4096.0).numpy().tobytes()[400:416])
    assert offset > 0
    data[offset + 3] ^= 0x40                     # an exponent bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="digest stored inside it"):
        load_checkpoint(path)


def test_non_finite_weights_are_refused_by_load_model(tmp_path, checkpoint, capsys):
    ckpt = load_checkpoint(checkpoint)
    name = next(iter(ckpt["ema"]))
    ckpt["ema"][name] = torch.full_like(ckpt["ema"][name], -1.5e36) * 1e10
    bad = tmp_path / "00000002.pt"
    atomic_torch_save(ckpt, bad)                 # a valid digest over non-finite weights
    got, err = _cli(capsys, ["sample-grid", bad, "--out", tmp_path / "g.png"])
    _assert_one_line_error(got, err, "sample-grid", "non-finite", name, expect_code=2)


def test_all_corrupt_checkpoints_stop_the_run_instead_of_restarting(tmp_path, dataset_dir, capsys):
    from repa.training import train
    run = tmp_path / "run"
    train(_config(run, dataset_dir, max_steps=2), progress=False)
    for _, path in list_checkpoints(run):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning):
        with pytest.raises(CheckpointError, match="every checkpoint"):
            latest_checkpoint(run)
    with pytest.warns(UserWarning):
        got, err = _cli(capsys, ["train", "--config", _write(tmp_path, _config(run, dataset_dir, max_steps=4))])
    _assert_one_line_error(got, err, "train", "every checkpoint", expect_code=2)


def _write(tmp_path, cfg) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(to_json(cfg))
    return path


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_leaves_no_temp_file(tmp_path, config_file):
    run = tmp_path / "run"
    # a file-size limit makes the checkpoint write fail the way a full disk does (EFBIG instead of ENOSPC)
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); from repa.cli import main; "
            f"sys.exit(main(['train', '--config', {str(config_file)!r}, '--run_dir', {str(run)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    _assert_one_line_error(done.returncode, done.stderr, "train", "cannot write checkpoint", expect_code=1)
    leftovers = [p for p in run.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


# ---- 7: odd images ---------------------------------------------------------------------------------------------------

def test_sixteen_bit_and_float_images_are_scaled_or_skipped(tmp_path):
    from repa.data import open_dataset
    from repa.data.prepare import prepare_dataset
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(src / "sixteen.png")
    Image.fromarray(ramp).save(src / "unit_float.tiff")
    Image.fromarray(ramp * 1000).save(src / "wide_float.tiff")
    out = prepare_dataset(str(tmp_path / "src"), str(tmp_path / "ds"), resolution=8, channels=1, num_workers=0,
                          progress=False)
    ds = open_dataset(out)
    expected = np.rint(ramp * 255).astype(np.uint8)
    images = ds.get_batch(np.arange(len(ds)))["image"][:, 0]
    assert len(ds) == 2
    for image in images:                          # bicubic resize at the same size is the identity
        assert np.abs(image.astype(int) - expected).max() <= 1
    skipped = (Path(out) / "skipped.txt").read_text()
    assert "wide_float.tiff" in skipped and "outside [0, 1] and [0, 255]" in skipped


# ---- 8: Ctrl-C and SIGTERM -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_the_current_step_and_exits_cleanly(tmp_path, dataset_dir, signum, code):
    from repa.training import train
    run = tmp_path / "run"
    cfg = _write(tmp_path, _config(run, dataset_dir, max_steps=100000, log_every=1, ckpt_every=100000))
    proc = subprocess.Popen([sys.executable, "-m", "repa", "train", "--config", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
    assert proc.returncode == code and "Traceback" not in err, err
    assert len(lines) == 1 and f"interrupted by {signal.Signals(signum).name}" in lines[0]
    assert "resume with: repa train --config" in lines[0]
    (step, path), = list_checkpoints(run)
    assert f"at step {step}" in lines[0] and str(path) in lines[0]
    assert not (run / ".lock").exists() and not [p for p in run.rglob("*") if ".tmp" in p.name]
    if signum == signal.SIGTERM:                  # the resumed run ends where an uninterrupted one ends
        end = step + 2
        train(_config(run, dataset_dir, max_steps=end, log_every=1, ckpt_every=100000), progress=False)
        train(_config(tmp_path / "full", dataset_dir, max_steps=end, log_every=1, ckpt_every=100000),
              progress=False)
        a, b = load_checkpoint(run / f"checkpoints/{end:08d}.pt"), load_checkpoint(
            tmp_path / f"full/checkpoints/{end:08d}.pt")
        assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_eval_checks_an_unwritable_output_folder_before_any_network_runs(ctx):
    # a file-size limit of 1 KB stands in for a full (or read-only) file system: the output check fails first,
    # although the Inception file named after it does not exist either
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000)); from repa.cli import main; "
            f"sys.exit(main(['eval', {str(ctx.samples)!r}, '--ref', {str(ctx.data)!r}, '--out', "
            f"{str(ctx.tmp / 'out' / 'm.json')!r}, '--inception', {str(ctx.tmp / 'missing.pt')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    _assert_one_line_error(done.returncode, done.stderr, "eval", "cannot write into", "File too large",
                           expect_code=1)
    assert not (ctx.tmp / "out").exists() and not [p for p in ctx.tmp.rglob("*") if "write-test" in p.name]


# ---- encoder objects follow the training device ----------------------------------------------------------------------

def test_encoder_objects_given_to_train_move_to_the_training_device(tmp_path, tiny_dataset, teacher):
    from repa.teachers import TeacherNeeds, Teachers
    cfg = tiny_train_config(tmp_path / "run")
    teachers = Teachers.load(cfg, TeacherNeeds(tokens=True), tiny_dataset, [teacher], torch.device("meta"))
    assert teachers.encoders[0].weight.device.type == "meta" and teachers.cache_keys == [None]


@pytest.mark.gpu
def test_a_cpu_built_teacher_trains_on_cuda(tmp_path, tiny_dataset, teacher):
    from repa.training import train
    result = train(tiny_train_config(tmp_path / "run", max_steps=2, ckpt_every=2), dataset=tiny_dataset,
                   encoders=[teacher], device="cuda", progress=False)
    assert result.step == 2
