"""The text condition end to end in process: TextContext (dropout to the empty caption, guidance's null value),
one caption drawn per item per step by the loader's seeded stream, and MMDiT training that resumes bitwise."""
import dataclasses

import numpy as np
import pytest
import torch

from repa.conditions import TextContext, read_captions
from repa.config import ConfigError
from repa.data.loader import BatchLoader
from repa.data.memory import ArrayDataset, TextArrayDataset
from repa.data.protocol import DataError, TextDataset, check_text_dataset
from repa.models import model_config
from tests.conftest import tiny_train_config


def captioned(n=16, length=5, width=6, seed=0, latents=True):
    """n 32x32 RGB images with 1..3 captions each; caption k of item i is the constant 10 * i + k (so a draw can
    be read back from the tokens), the empty caption -1."""
    rng = np.random.default_rng(seed)
    counts = 1 + np.arange(n) % 3
    contexts = np.concatenate([np.full((c, length, width), 10.0 * i + np.arange(c)[:, None, None], np.float32)
                               for i, c in enumerate(counts)])
    extra = dict(latent_mean=rng.standard_normal((n, 4, 8, 8), dtype=np.float32),
                 latent_std=np.full((n, 4, 8, 8), 0.1, np.float32)) if latents else {}
    return TextArrayDataset(rng.integers(0, 255, (n, 3, 32, 32), dtype=np.uint8), contexts, counts,
                            np.full((length, width), -1.0, np.float32),
                            captions=[[f"item {i} caption {k}" for k in range(c)] for i, c in enumerate(counts)],
                            **extra)


def test_captioned_memory_dataset_is_a_text_dataset():
    ds = captioned()
    assert isinstance(ds, TextDataset) and not isinstance(ArrayDataset(ds.images, ds.labels), TextDataset)
    assert (ds.num_classes, ds.class_names, ds.labels.dtype, int(ds.labels.sum())) == (0, [], np.int64, 0)
    assert ds.get_contexts([4, 2, 2], [1, 0, 2])[:, 0, 0].tolist() == [41.0, 20.0, 22.0]
    assert ds.captions(2) == ["item 2 caption 0", "item 2 caption 1", "item 2 caption 2"]
    with pytest.raises(IndexError):
        ds.get_contexts([0], [1])                  # item 0 has one caption
    check_text_dataset(ds, 6)
    with pytest.raises(DataError, match="--model.context-dim 6"):
        check_text_dataset(ds, 768)
    with pytest.raises(DataError, match="has no captions"):
        check_text_dataset(ArrayDataset(ds.images, ds.labels, num_classes=0))


def test_caption_draw_is_floor_of_uniform_times_count():
    ds = captioned()
    out = read_captions(ds, np.array([2, 2, 2, 0]), np.array([0.0, 0.34, 0.999, 0.999]))
    assert out["context"][:, 0, 0].tolist() == [20.0, 21.0, 22.0, 0.0]
    assert out["empty_context"].shape == (1, 5, 6) and float(out["empty_context"].max()) == -1.0


def test_text_context_drops_to_the_bound_empty_caption_and_guides_against_it():
    ds = captioned()
    values = torch.as_tensor(ds.get_contexts([1, 2, 3], [0, 0, 0]))
    cond = TextContext(0.1)
    with pytest.raises(ConfigError, match="bind it first"):
        cond.null(values)
    bound = cond.bind(ds)
    assert torch.equal(bound.bind({"empty_context": ds.empty_context[None]}).empty, bound.empty)
    dropped = bound.drop(values, torch.tensor([0.05, 0.5, 0.0999]))
    assert dropped[:, 0, 0].tolist() == [-1.0, 20.0, -1.0]
    assert torch.equal(TextContext(0.0).bind(ds).drop(values, torch.zeros(3)), values)
    assert bound.null(values).shape == values.shape and bound.guidable and not TextContext(0.0).guidable
    with pytest.raises(ConfigError, match="without caption dropout"):
        TextContext(0.0).check_guidable(2.0)


def _drawn(ds, world_size, rank, batches, seed=3):
    loader = BatchLoader(ds, 8 // world_size, seed=seed, rank=rank, world_size=world_size, keys=["context"],
                         readers=TextContext().readers)
    return [next(loader)["context"][:, 0, 0] for _ in range(batches)], loader


def test_loader_draws_captions_per_step_independent_of_world_size_and_resumes():
    ds = captioned()
    one, _ = _drawn(ds, 1, 0, 4)
    two = [torch.cat(pair) for pair in zip(_drawn(ds, 2, 0, 4)[0], _drawn(ds, 2, 1, 4)[0])]
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    epochs = torch.cat(one).reshape(2, 16)         # two epochs over the 16 items: the same items, other captions
    items = (epochs // 10).long()
    assert sorted(items[0].tolist()) == sorted(items[1].tolist()) == list(range(16))
    assert any((epochs[0][items[0].argsort()] != epochs[1][items[1].argsort()]).tolist())
    _, loader = _drawn(ds, 1, 0, 2)
    again = BatchLoader(ds, 8, seed=3, keys=["context"], readers=TextContext().readers)
    again.load_state_dict(loader.state_dict())
    assert all(torch.equal(next(again)["context"][:, 0, 0], x) for x in one[2:])


def text_config(run_dir, **overrides):
    model = model_config("MMDiT-12x384/2", depth=2, hidden_size=32, num_heads=2, input_size=8, encoder_depth=1,
                         encoder_dims=(16,), projector_dim=32, context_dim=6, class_dropout=0.25)
    cfg = tiny_train_config(run_dir, model=model, max_steps=6, ckpt_every=3, log_every=3, global_batch_size=8)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resolution=32), **overrides)


def test_mmdit_trains_and_resumes_bitwise(tmp_path):
    from repa.checkpoint import load_checkpoint
    from repa.training import train
    from tests.conftest import PatchTeacher
    ds, teacher = captioned(), PatchTeacher(grid=4, dim=16, channels=3)
    full = train(text_config(tmp_path / "full"), dataset=ds, encoders=[teacher], progress=False)
    assert full.step == 6 and np.isfinite(full.metrics["loss"]) and "align_loss" in full.metrics
    cfg = text_config(tmp_path / "resumed")
    train(cfg, dataset=ds, encoders=[teacher], progress=False, stop_at_step=3)
    train(cfg, dataset=ds, encoders=[teacher], progress=False)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(tmp_path / "resumed/checkpoints/00000006.pt")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    with pytest.raises(ConfigError, match="has no captions"):
        train(text_config(tmp_path / "labels"), dataset=ArrayDataset(ds.images, ds.labels, num_classes=0,
                                                                      latent_mean=ds.extra["latent_mean"],
                                                                      latent_std=ds.extra["latent_std"]),
              encoders=[teacher], progress=False)


def test_text_flags_resolve_to_the_options():
    from repa.cli import parse_command
    from repa.evaluation.text import TextOptions
    opts = parse_command("sample", ["ckpt.pt", "--num", "4", "--out", "o", "--prompts", "p.txt", "--text-encoder",
                                    "clip"])
    assert opts.text == TextOptions(prompts="p.txt", captions=None, text_encoder="clip")
    grid = parse_command("sample-grid", ["ckpt.pt", "--captions", "val"])
    assert grid.text == TextOptions(captions="val") and grid.text.text_encoder == "openai/clip-vit-large-patch14"
    prep = parse_command("prepare", ["src", "out", "--captions", "c.json", "--context-dtype", "float16"]).prepare
    assert (prep.captions, prep.context_dtype, prep.text_encoder) == ("c.json", "float16",
                                                                       "openai/clip-vit-large-patch14")
    assert parse_command("prepare", ["src", "out"]).prepare.captions is None


def test_text_sampling_refuses_missing_or_misplaced_captions(tmp_path):
    from repa.evaluation.text import TextOptions, read_prompts, text_source
    from tests.conftest import tiny_model_config
    model = model_config("MMDiT-12x384/2", depth=1, hidden_size=32, num_heads=2, input_size=8, encoder_depth=1,
                         encoder_dims=(), context_dim=6)
    with pytest.raises(ConfigError, match="give --prompts FILE .* or --captions DATASET"):
        text_source(model, None, num=1)
    with pytest.raises(ConfigError, match="not a text-to-image model"):
        text_source(tiny_model_config(), TextOptions(prompts="p.txt"), num=1)
    assert text_source(tiny_model_config(), None, num=1) is None
    (tmp_path / "p.txt").write_text("\n  a cat \n\n")
    assert read_prompts(str(tmp_path / "p.txt")) == ["a cat"]
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(ConfigError, match="has no prompt"):
        read_prompts(str(tmp_path / "e.txt"))
    with pytest.raises(ConfigError, match="no such file"):
        read_prompts(str(tmp_path / "none.txt"))
