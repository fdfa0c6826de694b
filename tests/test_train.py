"""The training loop: learning, checkpoints, exact resume, accumulation, non-finite guard, run-dir safety."""
import dataclasses
import json
import warnings

import pytest
import torch

import repa
from repa.checkpoint import list_checkpoints, load_checkpoint
from repa.config import ConfigError, TrainConfig, from_dict
from repa.training import train
from repa.training_utils import NonFiniteError
from tests.conftest import PatchTeacher, tiny_train_config


def _weights(run_dir, step):
    return load_checkpoint(f"{run_dir}/checkpoints/{step:08d}.pt")


def _assert_same_state(a, b):
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"


def test_twenty_steps_reduce_loss_and_checkpoint_loads(tmp_path, tiny_dataset, teacher):
    cfg = tiny_train_config(tmp_path / "run", max_steps=40, log_every=5, ckpt_every=20)
    result = train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert records[-1]["loss"] < records[0]["loss"] and records[-1]["align_loss"] < records[0]["align_loss"]
    loaded = repa.load_model(result.checkpoint)
    assert loaded.config == cfg.model and loaded.train_config == cfg and loaded.step == 40
    saved = from_dict(TrainConfig, json.loads((tmp_path / "run" / "config.json").read_text()))
    assert saved == cfg
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [20, 40]


def test_kill_and_resume_gives_bitwise_identical_weights(tmp_path, tiny_dataset, teacher):
    base = dict(max_steps=20, ckpt_every=5)
    train(tiny_train_config(tmp_path / "full", **base), dataset=tiny_dataset, encoders=[teacher], progress=False)
    run = tmp_path / "resumed"
    cfg = tiny_train_config(run, **base)
    # interrupted at step 7: its checkpoint at 7 is lost (killed), a stray half-written file stays behind
    train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False, stop_at_step=7)
    (run / "checkpoints" / "00000007.pt").unlink()
    (run / "checkpoints" / ".00000010.pt.tmp-999").write_bytes(b"partial")
    train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False, stop_at_step=13)   # stop again
    train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    _assert_same_state(_weights(tmp_path / "full", 20), _weights(run, 20))
    assert _weights(run, 20)["opt"]["state"].keys() == _weights(tmp_path / "full", 20)["opt"]["state"].keys()


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, tiny_dataset, teacher):
    base = dict(max_steps=15, ckpt_every=5, keep_last=5)
    train(tiny_train_config(tmp_path / "full", **base), dataset=tiny_dataset, encoders=[teacher], progress=False)
    run = tmp_path / "run"
    cfg = tiny_train_config(run, **base)
    train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False, stop_at_step=10)
    path = run / "checkpoints" / "00000010.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="00000010.pt is corrupt"):
        train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    _assert_same_state(_weights(tmp_path / "full", 15), _weights(run, 15))


def test_gradient_accumulation_matches_full_batch(tmp_path, tiny_dataset, teacher):
    full = train(tiny_train_config(tmp_path / "a", max_steps=6, ckpt_every=6), dataset=tiny_dataset,
                 encoders=[teacher], progress=False)
    accum = train(tiny_train_config(tmp_path / "b", max_steps=6, ckpt_every=6, grad_accum_steps=4),
                  dataset=tiny_dataset, encoders=[teacher], progress=False)
    a, b = load_checkpoint(full.checkpoint)["model"], load_checkpoint(accum.checkpoint)["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), name


class NaNAfter(PatchTeacher):
    """Returns NaN tokens from its n-th call on (simulates a numerical blow-up at a known step)."""

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n, self.calls = n, 0

    def forward(self, images):
        self.calls += 1
        out = super().forward(images)
        return out * float("nan") if self.calls > self.n else out


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, tiny_dataset):
    cfg = tiny_train_config(tmp_path / "run", max_steps=20, ckpt_every=5, log_every=5)
    with pytest.raises(NonFiniteError, match=r"step 7.*last good checkpoint is .*00000005\.pt") as info:
        train(cfg, dataset=tiny_dataset, encoders=[NaNAfter(7, grid=4, dim=16)], progress=False)
    assert info.value.step == 7
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [5]
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "run", 5)["model"].values())


def test_non_finite_steps_can_be_skipped_up_to_a_limit(tmp_path, tiny_dataset):
    cfg = tiny_train_config(tmp_path / "run", max_steps=10, ckpt_every=10, max_skipped_steps=2)
    with pytest.raises(NonFiniteError, match="max_skipped_steps"):
        train(cfg, dataset=tiny_dataset, encoders=[NaNAfter(7, grid=4, dim=16)], progress=False)
    # one bad step within the limit: the run finishes with finite weights
    class OneNaN(PatchTeacher):
        calls = 0

        def forward(self, images):
            self.calls += 1
            out = super().forward(images)
            return out * float("nan") if self.calls == 4 else out
    cfg = tiny_train_config(tmp_path / "run2", max_steps=10, ckpt_every=10, max_skipped_steps=2)
    result = train(cfg, dataset=tiny_dataset, encoders=[OneNaN(grid=4, dim=16)], progress=False)
    assert result.step == 10
    assert all(torch.isfinite(v).all() for v in load_checkpoint(result.checkpoint)["model"].values())


def test_resume_with_conflicting_config_is_refused(tmp_path, tiny_dataset, teacher):
    cfg = tiny_train_config(tmp_path / "run", max_steps=5, ckpt_every=5)
    train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    changed = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=5e-4), max_steps=8)
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.001 -> 0\.0005"):
        train(changed, dataset=tiny_dataset, encoders=[teacher], progress=False)
    # extending max_steps is resume-safe; an explicit override allows the rest
    train(dataclasses.replace(cfg, max_steps=8), dataset=tiny_dataset, encoders=[teacher], progress=False)
    result = train(changed, dataset=tiny_dataset, encoders=[teacher], progress=False, allow_config_change=True)
    assert result.step == 8


def test_vanilla_twin_has_identical_init_and_untrained_projector(tmp_path, tiny_dataset, teacher):
    repa_cfg = tiny_train_config(tmp_path / "repa", max_steps=1, ckpt_every=1)
    vanilla_cfg = dataclasses.replace(tiny_train_config(tmp_path / "vanilla", max_steps=1, ckpt_every=1),
                                      objective=dataclasses.replace(repa_cfg.objective, proj_coeff=0.0))
    a = train(repa_cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    b = train(vanilla_cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    sa, sb = load_checkpoint(a.checkpoint), load_checkpoint(b.checkpoint)
    assert "projectors.0.0.weight" in sb["model"]
    from repa.models import build_model
    torch.manual_seed(repa_cfg.seed)
    init = build_model(repa_cfg.model).state_dict()
    assert torch.equal(sb["model"]["projectors.0.0.weight"], init["projectors.0.0.weight"])
    assert not torch.equal(sa["model"]["projectors.0.0.weight"], init["projectors.0.0.weight"])


def test_lambda_schedule_stops_and_decays():
    from repa.config import ObjectiveConfig
    from repa.objectives import schedule
    cfg = ObjectiveConfig(proj_coeff=0.5, align_stop_step=100, align_decay_steps=50)
    assert [schedule(cfg, s, cfg.proj_coeff) for s in (0, 49, 50, 75, 99, 100, 500)] == [0.5, 0.5, 0.5, 0.25, 0.01, 0.0, 0.0]


def test_latent_space_run_uses_stored_posterior_and_cached_tokens(tmp_path):
    """Latent models train on (mean + std * eps) * 0.18215 of the stored moments, with tokens from the cache."""
    import numpy as np
    from repa.data.memory import ArrayDataset
    from tests.conftest import tiny_model_config
    rng = np.random.default_rng(0)
    n = 16
    key = "tokens:patch-teacher@32/4"
    dataset = ArrayDataset(rng.integers(0, 255, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 3, n),
                           num_classes=3, latent_mean=rng.standard_normal((n, 4, 8, 8), dtype=np.float32),
                           latent_std=np.full((n, 4, 8, 8), 0.1, np.float32),
                           **{key: rng.standard_normal((n, 16, 16)).astype(np.float16)})
    cfg = tiny_train_config(tmp_path / "run", model=tiny_model_config(in_channels=4, space="latent"), max_steps=4,
                            ckpt_every=4)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resolution=32))

    class Refuse(torch.nn.Module):
        def forward(self, images):
            raise AssertionError("the token cache should have been used")
    result = train(cfg, dataset=dataset, encoders=[Refuse()], progress=False)
    assert result.step == 4 and np.isfinite(result.metrics["loss"]) and result.metrics["align_loss"] < 0.5


def test_pruning_keeps_last_few_and_milestones(tmp_path):
    from repa.checkpoint import atomic_torch_save, checkpoint_path, prune_checkpoints
    for step in range(10, 110, 10):
        atomic_torch_save({"steps": step}, checkpoint_path(tmp_path, step))
    prune_checkpoints(tmp_path, keep_last=2, milestone_every=40)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [40, 80, 90, 100]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".sha256") == \
        ["00000040.pt.sha256", "00000080.pt.sha256", "00000090.pt.sha256", "00000100.pt.sha256"]


def test_activation_checkpointing_gives_the_same_gradients():
    from repa.config import ObjectiveConfig
    from repa.objectives import repa_loss
    from repa.models import build_model
    from tests.conftest import tiny_model_config
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_model_config()).train()
        for block in model.blocks:
            torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
        model.gradient_checkpointing = checkpointing
        gen = torch.Generator().manual_seed(0)
        x0 = torch.randn(4, 1, 8, 8, generator=gen)
        out = repa_loss(model.forward_features, x0, torch.tensor([0, 1, 2, 0]), [torch.randn(4, 16, 16, generator=gen)],
                        ObjectiveConfig(), t=torch.rand(4, generator=gen), noise=torch.randn(4, 1, 8, 8, generator=gen))
        out.total.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_previews_and_tensorboard_are_written(tmp_path, tiny_dataset, teacher):
    cfg = tiny_train_config(tmp_path / "run", max_steps=4, ckpt_every=4, sample_every=2, tensorboard=True)
    train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["00000002.png", "00000004.png"]
    assert any((tmp_path / "run" / "tensorboard").iterdir())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_store_the_loss_scaler(tmp_path, tiny_dataset, teacher, precision):
    cfg = tiny_train_config(tmp_path / "run", max_steps=4, ckpt_every=4, precision=precision)
    result = train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    state = load_checkpoint(result.checkpoint)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert bool(state["scaler"]) == (precision == "fp16")
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0


def test_fused_adamw_default_matches_the_unfused_update(tmp_path, tiny_dataset, teacher):
    """optim.fused (the default) changes the kernel, not the update: weights agree with the for-loop AdamW."""
    assert TrainConfig().optim.fused is True
    fused = train(tiny_train_config(tmp_path / "a", max_steps=6, ckpt_every=6), dataset=tiny_dataset,
                  encoders=[teacher], progress=False)
    cfg = tiny_train_config(tmp_path / "b", max_steps=6, ckpt_every=6)
    plain = train(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, fused=False)), dataset=tiny_dataset,
                  encoders=[teacher], progress=False)
    a, b = load_checkpoint(fused.checkpoint)["model"], load_checkpoint(plain.checkpoint)["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-5), name
