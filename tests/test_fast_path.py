"""The fast path (bf16 autocast, fused AdamW, compile) stays within a stated tolerance of the float32 path.

Tolerances: the REPA loss within 2% relative, the velocity within 5% of its scale (bf16 has 8 mantissa bits;
normalisation and cosine of the alignment term always run in float32).
"""
import pytest
import torch

from repa.config import ObjectiveConfig
from repa.objectives import repa_loss
from repa.models import build_model, model_config
from repa.utils import autocast_context
from repa.commands import FAST_PATH

LOSS_RTOL, VELOCITY_TOL = 0.02, 0.05


def _model(device):
    torch.manual_seed(0)
    model = build_model(model_config("SiT-S/2", depth=4, hidden_size=128, num_heads=2, input_size=16,
                                     encoder_depth=2, encoder_dims=(32,), projector_dim=64)).to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _compare(device):
    model = _model(device)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 4, 16, 16, generator=gen).to(device)
    t, noise = torch.rand(8, generator=gen).to(device), torch.randn(8, 4, 16, 16, generator=gen).to(device)
    labels = torch.randint(0, 1000, (8,), generator=gen).to(device)
    tokens = [torch.randn(8, 64, 32, generator=gen).to(device)]
    cfg = ObjectiveConfig(proj_coeff=0.5)
    ref = repa_loss(model.forward_features, x0, labels, tokens, cfg, t=t, noise=noise)
    with autocast_context(FAST_PATH["precision"], torch.device(device)):
        fast = repa_loss(model.forward_features, x0, labels, tokens, cfg, t=t, noise=noise)
    assert abs(fast.total.item() - ref.total.item()) <= LOSS_RTOL * abs(ref.total.item())
    assert abs(fast.terms["align_loss"].item() - ref.terms["align_loss"].item()) <= LOSS_RTOL * abs(ref.terms["align_loss"].item())
    with torch.no_grad():
        v_ref = model(x0, t, labels)
        with autocast_context("bf16", torch.device(device)):
            v_fast = model(x0, t, labels)
    assert (v_fast.float() - v_ref).abs().max() <= VELOCITY_TOL * v_ref.abs().max()


def test_fast_path_matches_float32_on_cpu():
    _compare("cpu")


@pytest.mark.gpu
def test_fast_path_matches_float32_on_gpu():
    _compare("cuda")


def test_fast_flag_sets_the_fast_path(capsys):
    import json
    from repa.cli import main
    assert main(["train", "--preset", "SiT-B/2-REPA-256", "--fast", "--compile", "false", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["precision"] == "bf16" and cfg["optim"]["fused"] is True and cfg["compile"] is False


@pytest.mark.gpu
def test_attention_runs_on_flash_kernels_on_gpu():
    """On CUDA in bf16 the SiT's attention is served by the flash kernel (restricting SDPA to it must work)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model = _model("cuda").to(torch.bfloat16)
    x = torch.randn(4, 4, 16, 16, device="cuda", dtype=torch.bfloat16)
    t, y = torch.rand(4, device="cuda", dtype=torch.bfloat16), torch.randint(0, 1000, (4,), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
        v = model(x, t, y)
    assert v.dtype == torch.bfloat16 and torch.isfinite(v).all() and v.abs().max() > 0


@pytest.mark.gpu
def test_training_fast_path_matches_float32_on_gpu(tmp_path, tiny_dataset, teacher):
    """The whole loop on CUDA: bf16 + fused AdamW + torch.compile against float32, same init, data and noise."""
    import dataclasses
    import json
    from repa.training import train
    from tests.conftest import tiny_train_config
    losses = {}
    for name, fast in (("fp32", False), ("fast", True)):
        cfg = tiny_train_config(tmp_path / name, max_steps=4, log_every=1, ckpt_every=4)
        if fast:
            cfg = dataclasses.replace(cfg, precision="bf16", compile=True,
                                      optim=dataclasses.replace(cfg.optim, fused=True))
        train(cfg, dataset=tiny_dataset, encoders=[teacher], device="cuda", progress=False)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records]
    assert len(losses["fast"]) == len(losses["fp32"]) == 4
    for fast, ref in zip(losses["fast"], losses["fp32"]):
        assert abs(fast - ref) <= LOSS_RTOL * 2.5 * abs(ref)


@pytest.mark.gpu
def test_training_steps_do_not_synchronise_with_the_host(tmp_path, tiny_dataset, teacher):
    """Between log and checkpoint steps the loop never waits for the GPU: the number of synchronising CUDA calls
    (torch.cuda.set_sync_debug_mode) is the same for a 2-step and an 8-step run that log only at the end."""
    import warnings
    from repa.training import train
    from tests.conftest import tiny_train_config

    def syncs(steps):
        cfg = tiny_train_config(tmp_path / f"run{steps}", max_steps=steps, log_every=1000, ckpt_every=1000)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train(cfg, dataset=tiny_dataset, encoders=[teacher], device="cuda", progress=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    few = syncs(2)
    assert few > 0                              # the detector works: the final log and checkpoint synchronise
    assert syncs(8) == few


def test_a_broken_compiler_is_named_before_training(monkeypatch, tmp_path, capsys):
    """``compile`` with a PyTorch whose compiler fails (here: made to fail as a partial install does, at the first
    compiled call) is refused by the preflight with the reason and the fix, before the run folder is created."""
    from repa.config import ConfigError
    from repa.preflight import check_compile

    def broken_compile(fn, *args, **kwargs):
        def call(*a, **k):
            raise ImportError("cannot import name 'some_kernel' from 'torch._inductor'")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(ConfigError, match=r"compile: torch.compile does not work on cpu .*ImportError: cannot import "
                                          r"name 'some_kernel'.*--compile false"):
        check_compile("cpu")
    from repa.cli import main
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "fmnist-REPA", "--compile", "true", "--run-dir", str(run_dir)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repa train: error: compile: ") and "some_kernel" in err[0]
    assert not run_dir.exists()


def test_compile_flag_ends_in_one_line_on_this_machine(capfd, tmp_path):
    """With this machine's real PyTorch: either its compiler works (the preflight passes) or ``repa train
    --compile true`` ends with one line naming compile, never a traceback."""
    from repa.cli import main
    from repa.config import ConfigError
    from repa.preflight import check_compile
    try:
        check_compile("cpu")
        works = True
    except ConfigError:
        works = False
    code = main(["train", "--preset", "fmnist-REPA", "--compile", "true", "--run-dir", str(tmp_path / "run")])
    err = capfd.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("repa train: error: ")   # no data: fails either way
    assert ("compile:" in err[0]) == (not works)
