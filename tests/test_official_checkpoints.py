"""Official checkpoints of REPA's successors load through ``repa.load_model`` and sample (docs/VARIANTS.md).

The state dicts are written out here with the official parameter names and shapes, read off each repository's
``SiT`` (SRA: vvvvvjdy/SRA ``SiT-SRA/models/sit.py``; iREPA: End2End-Diffusion/iREPA ``ldm/models/sit.py``; HASTE:
NUS-HPC-AI-Lab/HASTE ``models/sit.py``; REG: Martinser/REG ``models/sit.py``), in their training checkpoints' layout
(``{"model", "ema", "opt", "args", "steps"}``). ``tests/test_official_code.py`` builds the same from the official
code itself when a snapshot of it is given.
"""
import argparse
import warnings

import pytest
import torch

import repa

D, DEPTH, HEADS, GRID, PATCH, C, CLASSES, E, PROJ = 32, 3, 2, 4, 2, 4, 10, 16, 24


def _backbone(gen, *, tokens=GRID * GRID, class_token_dim=0):
    """The SiT backbone every one of the four repositories shares (timm PatchEmbed/Attention/Mlp, adaLN-Zero)."""
    shapes = {"pos_embed": (1, tokens, D), "x_embedder.proj.weight": (D, C, PATCH, PATCH), "x_embedder.proj.bias": (D,),
              "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
              "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
              "y_embedder.embedding_table.weight": (CLASSES + 1, D),
              "final_layer.linear.weight": (PATCH * PATCH * C, D), "final_layer.linear.bias": (PATCH * PATCH * C,),
              "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,)}
    for i in range(DEPTH):
        shapes.update({f"blocks.{i}.attn.qkv.weight": (3 * D, D), f"blocks.{i}.attn.qkv.bias": (3 * D,),
                       f"blocks.{i}.attn.proj.weight": (D, D), f"blocks.{i}.attn.proj.bias": (D,),
                       f"blocks.{i}.mlp.fc1.weight": (4 * D, D), f"blocks.{i}.mlp.fc1.bias": (4 * D,),
                       f"blocks.{i}.mlp.fc2.weight": (D, 4 * D), f"blocks.{i}.mlp.fc2.bias": (D,),
                       f"blocks.{i}.adaLN_modulation.1.weight": (6 * D, D),
                       f"blocks.{i}.adaLN_modulation.1.bias": (6 * D,)})
    if class_token_dim:
        shapes.update({"final_layer.linear_cls.weight": (class_token_dim, D),
                       "final_layer.linear_cls.bias": (class_token_dim,),
                       "cls_projectors2.weight": (D, class_token_dim), "cls_projectors2.bias": (D,),
                       "wg_norm.weight": (D,), "wg_norm.bias": (D,)})
    return {k: 0.1 * torch.randn(shape, generator=gen) for k, shape in shapes.items()}


def _repa_mlp(gen, prefix="projectors.0."):
    """REPA's build_mlp projector (HASTE and REG keep it): Linear(D, P) - SiLU - Linear(P, P) - SiLU - Linear(P, E)."""
    return {prefix + "0.weight": torch.randn(PROJ, D, generator=gen), prefix + "0.bias": torch.randn(PROJ, generator=gen),
            prefix + "2.weight": torch.randn(PROJ, PROJ, generator=gen), prefix + "2.bias": torch.randn(PROJ, generator=gen),
            prefix + "4.weight": torch.randn(E, PROJ, generator=gen), prefix + "4.bias": torch.randn(E, generator=gen)}


def official_state(method: str, seed: int = 0) -> tuple[dict, dict]:
    """(state dict, args) of an official ``method`` checkpoint with random weights."""
    gen = torch.Generator().manual_seed(seed)
    args = dict(model="SiT-custom/2", num_classes=CLASSES, cfg_prob=0.1, num_heads=HEADS, path_type="linear")
    if method == "sra":            # SimpleHead(D, D) as ap_head: Linear(D, 2D) - SiLU - Linear(2D, D)
        state = _backbone(gen)
        state.update({"ap_head.linear1.weight": torch.randn(2 * D, D, generator=gen),
                      "ap_head.linear1.bias": torch.randn(2 * D, generator=gen),
                      "ap_head.linear2.weight": torch.randn(D, 2 * D, generator=gen),
                      "ap_head.linear2.bias": torch.randn(D, generator=gen)})
        args.update(block_out_s=2, block_out_t=3, t_max=0.2, loss_type="sml1")
    elif method == "irepa":        # ProjectionLayer("conv") wraps its Conv2d as projection_layer
        state = _backbone(gen)
        state.update({"projectors.0.projection_layer.weight": torch.randn(E, D, 3, 3, generator=gen),
                      "projectors.0.projection_layer.bias": torch.randn(E, generator=gen)})
        args.update(encoder_depth=2, projection_layer_type="conv", proj_kwargs_kernel_size=3)
    elif method == "irepa-mlp":    # ProjectionLayer("mlp"): build_mlp under projection_layer
        state = _backbone(gen)
        state.update(_repa_mlp(gen, "projectors.0.projection_layer."))
        args.update(encoder_depth=2, projection_layer_type="mlp")
    elif method == "haste":        # REPA's SiT and projector
        state = _backbone(gen)
        state.update(_repa_mlp(gen))
        args.update(encoder_depth=2)
    elif method == "reg":          # one extra token: pos_embed (1, 1 + N, D) with a zero first row
        state = _backbone(gen, tokens=GRID * GRID + 1, class_token_dim=E)
        state["pos_embed"][:, 0] = 0
        state.update(_repa_mlp(gen))
        args.update(encoder_depth=2, cls=0.03)
    else:
        raise ValueError(method)
    return state, args


def _save(tmp_path, method, state, args):
    path = tmp_path / f"{method}.pt"
    torch.save({"model": state, "ema": state, "opt": {}, "args": argparse.Namespace(**args), "steps": 7}, path)
    return path


HEADS_DROPPED = {"sra": "ap_head", "irepa": "projection_layer", "irepa-mlp": "projection_layer"}


@pytest.mark.parametrize("method", ["sra", "irepa", "irepa-mlp", "haste", "reg"])
def test_official_checkpoints_load_strictly_and_sample(tmp_path, method):
    state, args = official_state(method)
    path = _save(tmp_path, method, state, args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = repa.load_model(path)
    messages = [str(w.message) for w in caught]
    if method in HEADS_DROPPED:        # one line naming what was dropped
        dropped = [m for m in messages if "training-only" in m]
        assert len(dropped) == 1 and HEADS_DROPPED[method] in dropped[0] and "\n" not in dropped[0]
    else:
        assert not any("training-only" in m for m in messages)
    # everything else loaded, strictly: every official tensor but the dropped heads is in the network
    own = loaded.model.state_dict()
    kept = {k: v for k, v in state.items() if not (k.startswith("ap_head.") or ".projection_layer." in k)}
    assert set(kept) <= set(own)
    for key, value in kept.items():
        torch.testing.assert_close(own[key], value, msg=key)
    assert loaded.config.depth == DEPTH and loaded.config.hidden_size == D and loaded.config.num_classes == CLASSES
    assert loaded.config.class_token == (method == "reg")
    noise = torch.randn(2, C, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(1))
    out = repa.sample(loaded, noise, torch.tensor([1, 2]), sampler="euler", steps=3, cfg_scale=1.5,
                      generator=torch.Generator().manual_seed(2))
    assert out.shape == noise.shape and torch.isfinite(out).all() and not torch.equal(out, noise)


def test_a_renamed_or_unknown_head_is_still_refused(tmp_path):
    """Only the named heads are dropped: anything else that does not fit the network is an error, as before."""
    state, args = official_state("sra")
    state["ap_head_extra.weight"] = torch.zeros(3)
    with pytest.raises(repa.checkpoint.CheckpointError, match="unexpected"), pytest.warns(UserWarning, match="ap_head"):
        repa.load_model(_save(tmp_path, "odd", state, args))


def test_official_checkpoints_export_and_reload(tmp_path):
    state, args = official_state("sra")
    path = _save(tmp_path, "sra", state, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = repa.checkpoint.export_model(path, tmp_path / "exported")
    again = repa.load_model(folder)
    assert not any(k.startswith("ap_head") for k in again.model.state_dict())
    torch.testing.assert_close(again.model.state_dict()["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
