"""The reference's own dataset folders read as they are (repa.data.layouts): each layout is written here exactly as
the reference's tools write it (sihyun-yu/REPA preprocessing/dataset_tools.py; U-ViT's extract_mscoco_feature.py),
opened, read back value for value, trained from through the CLI, and broken in each way a user meets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repa.cli import main
from repa.data import open_folder
from repa.data.layouts import ReferenceImageNetFolder, UViTCocoFeatures, detect_layout, split_moments
from repa.data.protocol import DataError, Dataset


# ---- the layouts, written as the reference's tools write them ----------------------------------------------------

def write_reference_imagenet(root: Path, n: int = 12, res: int = 32, latent: int = 4, classes: int = 3,
                             seed: int = 0) -> dict:
    """``dataset_tools.py convert`` then ``encode``: images/NNNNN/imgNNNNNNNN.png (PNG, compress_level 0),
    vae-sd/NNNNN/img-mean-std-NNNNNNNN.npy (float32 (8, h, w): mean then std), a dataset.json in each with
    [file name, label] pairs. Returns what was written, per item."""
    rng = np.random.default_rng(seed)
    images, moments, labels = [], [], []
    image_labels, latent_labels = [], []
    for idx in range(n):
        s = f"{idx:08d}"
        image_name, latent_name = f"{s[:5]}/img{s}.png", f"{s[:5]}/img-mean-std-{s}.npy"
        image = rng.integers(0, 256, (res, res, 3), dtype=np.uint8)
        m = np.concatenate([rng.standard_normal((4, latent, latent)),
                            rng.random((4, latent, latent)) + 0.05]).astype(np.float32)
        label = int(rng.integers(0, classes))
        (root / "images" / s[:5]).mkdir(parents=True, exist_ok=True)
        (root / "vae-sd" / s[:5]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / image_name, format="png", compress_level=0, optimize=False)
        np.save(root / "vae-sd" / latent_name, m)
        images.append(image.transpose(2, 0, 1))
        moments.append(m)
        labels.append(label)
        image_labels.append([image_name, label])
        latent_labels.append([latent_name, label])
    (root / "images" / "dataset.json").write_text(json.dumps({"labels": image_labels}))
    (root / "vae-sd" / "dataset.json").write_text(json.dumps({"labels": latent_labels}))
    return {"image": np.stack(images), "moments": np.stack(moments), "label": np.array(labels)}


def write_uvit_coco(root: Path, n: int = 5, res: int = 16, latent: int = 2, tokens: int = 7, width: int = 6,
                    seed: int = 0) -> dict:
    """U-ViT's scripts: ``{split}/{i}.npy`` (float32 (8, h, w): mean then log-variance), ``{split}/{i}_{k}.npy``
    (float32 (77, 768) at full size: one per caption), ``empty_context.npy`` at the root; and the ``{i}.png`` the
    reference's MSCOCOFeatureDataset reads beside them."""
    rng = np.random.default_rng(seed)
    written = {}
    empty = rng.standard_normal((tokens, width)).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "empty_context.npy", empty)
    for split in ("train", "val"):
        (root / split).mkdir()
        images, moments, contexts = [], [], []
        for i in range(n):
            image = rng.integers(0, 256, (res, res, 3), dtype=np.uint8)
            m = rng.standard_normal((8, latent, latent)).astype(np.float32)
            m[4:, 0, 0] = 25.0                       # beyond the clamp: std = exp(20 / 2), as the reference
            Image.fromarray(image).save(root / split / f"{i}.png")
            np.save(root / split / f"{i}.npy", m)
            caps = [rng.standard_normal((tokens, width)).astype(np.float32) for _ in range(1 + i % 3)]
            for k, c in enumerate(caps):
                np.save(root / split / f"{i}_{k}.npy", c)
            images.append(image.transpose(2, 0, 1))
            moments.append(m)
            contexts.append(caps)
        written[split] = {"image": np.stack(images), "moments": np.stack(moments), "contexts": contexts}
    written["empty"] = empty
    return written


@pytest.fixture
def imagenet(tmp_path):
    root = tmp_path / "imagenet256"
    return root, write_reference_imagenet(root)


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco256_features"
    return root, write_uvit_coco(root)


# ---- reading ----------------------------------------------------------------------------------------------------

def test_reference_imagenet_folder_reads_back_what_was_written(imagenet):
    root, w = imagenet
    ds = open_folder(root)
    assert isinstance(ds, ReferenceImageNetFolder) and isinstance(ds, Dataset)
    assert detect_layout(root) == "reference-imagenet"
    assert (len(ds), ds.resolution, ds.channels, ds.has_latents, ds.path) == (12, 32, 3, True, str(root))
    assert ds.num_classes == w["label"].max() + 1 and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, w["label"])
    idx = np.array([5, 0, 11, 5])
    batch = ds.get_batch(idx)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(batch["image"], w["image"][idx])
    np.testing.assert_array_equal(batch["label"], w["label"][idx])
    np.testing.assert_array_equal(batch["latent_mean"], w["moments"][idx, :4])     # the reference: mean, then std
    np.testing.assert_array_equal(batch["latent_std"], w["moments"][idx, 4:])
    assert ds.array_shape("latent_mean") == (4, 4, 4) and ds.array_shape("image") == (3, 32, 32)
    assert ds.array_shape("tokens:x") is None and ds.token_cache_key("dinov2-vit-b", 32, 2) is None
    assert list(ds.get_batch([2], keys=["latent_std"])) == ["latent_std"]


def test_images_and_latents_pair_by_name_not_by_sorted_order(tmp_path):
    """The reference sorts two listings and pairs them by position: with image 2 gone and an image 12 added, the
    counts agree and it would give image 3 the latent of image 2. Here the latent without its image is refused,
    and once both sides hold the same names every image comes with its own latent."""
    root = tmp_path / "ds"
    w = write_reference_imagenet(root, n=12)
    (root / "images/00000/img00000002.png").unlink()
    Image.fromarray(w["image"][5].transpose(1, 2, 0)).save(root / "images/00000/img00000012.png")
    with pytest.raises(DataError, match=r"vae-sd/00000/img-mean-std-00000002.npy: no image of that index"):
        open_folder(root)
    (root / "vae-sd/00000/img-mean-std-00000002.npy").unlink()
    np.save(root / "vae-sd/00000/img-mean-std-00000012.npy", w["moments"][7])
    labels = json.loads((root / "vae-sd/dataset.json").read_text())["labels"]
    labels = [p for p in labels if "00000002" not in p[0]] + [["00000/img-mean-std-00000012.npy", 2]]
    (root / "vae-sd/dataset.json").write_text(json.dumps({"labels": labels}))
    (root / "images/dataset.json").unlink()                   # optional: only checked against when present
    ds = open_folder(root)
    assert len(ds) == 12
    batch = ds.get_batch([2, 11])                             # the item after the gap, and the added one
    np.testing.assert_array_equal(batch["image"], w["image"][[3, 5]])
    np.testing.assert_array_equal(batch["latent_mean"], w["moments"][[3, 7], :4])
    np.testing.assert_array_equal(batch["label"], [w["label"][3], 2])


def test_images_alone_are_a_pixel_dataset(tmp_path):
    root = tmp_path / "ds"
    w = write_reference_imagenet(root, n=4)
    shutil.rmtree(root / "vae-sd")
    ds = open_folder(root)
    assert not ds.has_latents and ds.array_shape("latent_mean") is None
    np.testing.assert_array_equal(ds.get_batch([3, 1])["image"], w["image"][[3, 1]])
    np.testing.assert_array_equal(ds.labels, w["label"])


def test_uvit_coco_features_read_back_what_was_written(coco):
    root, w = coco
    ds = open_folder(root)                                   # the root: the training split, as the reference
    assert isinstance(ds, UViTCocoFeatures) and isinstance(ds, Dataset) and detect_layout(root) == "uvit-coco"
    assert (len(ds), ds.resolution, ds.num_classes, ds.class_names, ds.has_latents) == (5, 16, 0, [], True)
    assert ds.labels.dtype == np.int64 and not ds.labels.any() and ds.captions(0) is None
    np.testing.assert_array_equal(ds.caption_counts, [1, 2, 3, 1, 2])
    assert ds.caption_counts.dtype == np.int64
    np.testing.assert_array_equal(ds.empty_context, w["empty"])
    train = w["train"]
    idx = np.array([4, 2, 2])
    batch = ds.get_batch(idx)
    np.testing.assert_array_equal(batch["image"], train["image"][idx])
    mean, logvar = train["moments"][idx, :4], train["moments"][idx, 4:]
    np.testing.assert_array_equal(batch["latent_mean"], mean)
    np.testing.assert_allclose(batch["latent_std"], np.exp(0.5 * np.clip(logvar, -30, 20)), rtol=1e-6)
    assert batch["latent_std"][0, 0, 0, 0] == pytest.approx(np.exp(10.0), rel=1e-6)   # 25 clamped to 20
    contexts = ds.get_contexts(idx, [1, 0, 2])
    assert contexts.dtype == np.float32 and contexts.shape == (3, 7, 6)
    for row, (i, k) in enumerate(zip(idx, [1, 0, 2])):
        np.testing.assert_array_equal(contexts[row], train["contexts"][i][k])
    with pytest.raises(IndexError, match="item 0 has 1 captions"):
        ds.get_contexts([0], [1])
    val = open_folder(root / "val")                          # a split folder: empty_context.npy from its parent
    assert len(val) == 5 and detect_layout(root / "val") == "uvit-coco"
    np.testing.assert_array_equal(val.get_batch([3])["image"], w["val"]["image"][[3]])
    np.testing.assert_array_equal(val.get_contexts([2], [2])[0], w["val"]["contexts"][2][2])


def test_split_moments_conventions():
    m = np.arange(2 * 8 * 4, dtype=np.float32).reshape(2, 8, 2, 2) / 100
    mean, std = split_moments(m, "mean_std")
    np.testing.assert_array_equal(mean, m[:, :4]) and np.testing.assert_array_equal(std, m[:, 4:])
    _, std = split_moments(m, "mean_logvar")
    np.testing.assert_allclose(std, np.exp(m[:, 4:] / 2), rtol=1e-6)


# ---- malformed folders: one line naming the file and the fix -----------------------------------------------------

def _drop_label(root: Path, name: str) -> None:
    path = root / "vae-sd/dataset.json"
    path.write_text(json.dumps({"labels": [p for p in json.loads(path.read_text())["labels"] if p[0] != name]}))


IMAGENET_BREAKS = {
    "labels-file-missing": (lambda r: (r / "vae-sd/dataset.json").unlink(), "vae-sd/dataset.json: missing"),
    "label-missing-for-a-file": (lambda r: _drop_label(r, "00000/img-mean-std-00000003.npy"),
                                 "no label for '00000/img-mean-std-00000003.npy'"),
    "latent-missing": (lambda r: (r / "vae-sd/00000/img-mean-std-00000011.npy").unlink(),
                       "images/00000/img00000011.png: no latent of that index"),
    "latent-without-image": (lambda r: np.save(r / "vae-sd/00000/img-mean-std-00000012.npy", np.zeros((8, 4, 4))),
                             "vae-sd/00000/img-mean-std-00000012.npy: no image of that index"),
    "latent-wrong-shape": (lambda r: np.save(r / "vae-sd/00000/img-mean-std-00000000.npy", np.zeros((7, 4, 4))),
                           "img-mean-std-00000000.npy: latent moments of shape (7, 4, 4)"),
    "labels-disagree": (lambda r: (r / "images/dataset.json").write_text(json.dumps({"labels": [
        [f"00000/img{i:08d}.png", 7] for i in range(12)]})), "has label 7 in images/dataset.json"),
    "images-missing": (lambda r: shutil.rmtree(r / "images"), "images: missing"),
    "labels-not-json": (lambda r: (r / "vae-sd/dataset.json").write_text("{"), "vae-sd/dataset.json: not a"),
    "two-images-one-index": (lambda r: shutil.copy(r / "images/00000/img00000003.png",
                                                   r / "images/00000/img00000003.jpg"), "have the same index"),
}

COCO_BREAKS = {
    "contexts-missing": (lambda r: (r / "train/3_0.npy").unlink(), "train/3_0.npy: missing"),
    "a-caption-number-missing": (lambda r: (r / "train/2_1.npy").unlink(), "train/2_1.npy: missing"),
    "image-missing": (lambda r: (r / "train/4.png").unlink(), "4 images for 5 latents (4.png is missing)"),
    "image-without-latent": (lambda r: shutil.copy(r / "train/0.png", r / "train/5.png"), "5.png has no 5.npy"),
    "latent-missing": (lambda r: (r / "train/2.npy").unlink(), "train/2.npy: missing"),
    "context-without-latent": (lambda r: np.save(r / "train/9_0.npy", np.zeros((7, 6), np.float32)),
                               "9_0.npy has no 9.npy"),
    "empty-context-missing": (lambda r: (r / "empty_context.npy").unlink(), "empty_context.npy: missing"),
    "context-wrong-shape": (lambda r: np.save(r / "train/0_0.npy", np.zeros((7, 5), np.float32)),
                            "train/0_0.npy: text context of shape (7, 5)"),
    "latent-wrong-shape": (lambda r: np.save(r / "train/0.npy", np.zeros((3, 2, 2), np.float32)),
                           "train/0.npy: latent moments of shape (3, 2, 2)"),
}


def _train_error(capsys, root: Path, run_dir: Path, *extra: str) -> str:
    code = main(["train", "--preset", "SiT-B/2-REPA-256", "--data.path", str(root), "--run-dir", str(run_dir), *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("repa train: error: ") and "Traceback" not in err, err
    assert not run_dir.exists()                  # a failed start leaves nothing that blocks the corrected rerun
    return lines[0]


@pytest.mark.parametrize("case", sorted(IMAGENET_BREAKS))
def test_a_malformed_reference_imagenet_folder_is_one_line(capsys, tmp_path, case):
    root = tmp_path / "ds"
    write_reference_imagenet(root)
    breaks, needle = IMAGENET_BREAKS[case]
    breaks(root)
    with pytest.raises(DataError, match=None) as info:
        open_folder(root)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert needle in _train_error(capsys, root, tmp_path / "run")


@pytest.mark.parametrize("case", sorted(COCO_BREAKS))
def test_a_malformed_uvit_coco_folder_is_one_line(capsys, tmp_path, case):
    root = tmp_path / "coco"
    write_uvit_coco(root)
    breaks, needle = COCO_BREAKS[case]
    breaks(root)
    with pytest.raises(DataError) as info:
        open_folder(root)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert needle in _train_error(capsys, root, tmp_path / "run")


def test_files_beyond_the_first_are_checked_when_read(imagenet, coco):
    """Open checks one file of each kind; every other file is checked as a batch reads it (names the file)."""
    root, _ = imagenet
    np.save(root / "vae-sd/00000/img-mean-std-00000005.npy", np.zeros((8, 2, 2), np.float32))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images/00000/img00000006.png")
    (root / "images/00000/img00000007.png").write_bytes(b"\x89PNG\r\n")
    ds = open_folder(root)
    for index, needle in ((5, "img-mean-std-00000005.npy: latent moments of shape (8, 2, 2), expected (8, 4, 4)"),
                          (6, "img00000006.png: image of shape (3, 16, 16)"),
                          (7, "img00000007.png: unreadable image")):
        with pytest.raises(DataError) as info:
            ds.get_batch([0, index])
        assert needle in str(info.value)
    ds.get_batch([0, 1, 2])                                  # the intact files still read
    coco_root, _ = coco
    np.save(coco_root / "train/2_2.npy", np.zeros((7, 5), np.float32))
    with pytest.raises(DataError, match=r"train/2_2.npy: text context of shape \(7, 5\), expected \(7, 6\)"):
        open_folder(coco_root).get_contexts([2], [2])


def test_a_folder_of_no_known_layout_says_what_it_would_read(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match=r"not a prepared dataset \(no manifest.json\) nor a folder of the reference"):
        open_folder(tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        open_folder(tmp_path / "missing")


# ---- training straight from the reference's folder, in one command -----------------------------------------------

TINY = ["--model.depth", "2", "--model.hidden-size", "32", "--model.num-heads", "2", "--model.input-size", "4",
        "--model.encoder-depth", "1", "--model.projector-dim", "16", "--data.resolution", "32",
        "--global-batch-size", "4", "--precision", "fp32", "--ckpt-every", "2", "--log-every", "1",
        "--no-tensorboard", "--data.num-workers", "0", "--sample-every", "0"]


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    """Random DINOv2 weights of the registry's width (768, so the preset's projector fits), one block."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("dinov2")
    config = transformers.Dinov2Config(hidden_size=768, num_hidden_layers=1, num_attention_heads=12, mlp_ratio=1,
                                       patch_size=14, image_size=28)
    transformers.Dinov2Model(config).save_pretrained(folder)
    return folder


def test_repa_trains_from_the_reference_imagenet_folder_in_one_command(tmp_path, imagenet, tiny_dinov2):
    """``repa train --preset SiT-B/2-REPA-256 --data.path DIR``: latents from vae-sd/, the DINOv2 teacher live on
    images/, labels from vae-sd/dataset.json; the rerun resumes from the checkpoint."""
    root, _ = imagenet
    run = tmp_path / "run"
    argv = ["train", "--preset", "SiT-B/2-REPA-256", "--data.path", str(root), "--run-dir", str(run),
            "--encoder-weights", str(tiny_dinov2), *TINY]
    assert main([*argv, "--max-steps", "2"]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["loss"]) and m["align_loss"] != 0 for m in metrics)    # the teacher ran
    assert json.loads((run / "config.json").read_text())["data"]["path"] == str(root)
    assert main([*argv, "--max-steps", "4"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and (run / "checkpoints" / "00000004.pt").is_file()


def test_an_unlabelled_reference_folder_trains_only_an_unconditional_model(capsys, tmp_path):
    root = tmp_path / "ds"
    write_reference_imagenet(root, n=4)
    for store in ("images", "vae-sd"):                       # dataset_tools.py writes null without labels
        (root / store / "dataset.json").write_text(json.dumps({"labels": None}))
    ds = open_folder(root)
    assert ds.num_classes == 0 and ds.class_names == [] and not ds.labels.any()
    line = _train_error(capsys, root, tmp_path / "run", *TINY)
    assert "no class labels" in line and "--model.num-classes 0" in line


def test_verify_scans_every_file_of_a_reference_folder(capsys, imagenet, coco):
    """Opening checks one file of each kind; ``repa prepare --verify DIR`` checks them all (``--no-hash``: image
    headers only) and names each bad file."""
    root, _ = imagenet
    assert main(["prepare", "--verify", str(root)]) == 0 and capsys.readouterr().out.strip().endswith(": OK")
    np.save(root / "vae-sd/00000/img-mean-std-00000005.npy", np.zeros((8, 2, 2), np.float32))
    (root / "images/00000/img00000007.png").write_bytes(b"\x89PNG\r\n")
    assert main(["prepare", "--verify", str(root)]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 2 and "img-mean-std-00000005.npy: latent moments of shape (8, 2, 2)" in problems[0]
    assert "img00000007.png: unreadable image" in problems[1]
    coco_root, _ = coco
    np.save(coco_root / "val/4_1.npy", np.zeros((7, 5), np.float32))
    assert main(["prepare", "--verify", str(coco_root / "train"), "--no-hash"]) == 0
    assert main(["prepare", "--verify", str(coco_root / "val"), "--no-hash"]) == 1
    out = capsys.readouterr().out
    assert "val/4_1.npy: text context of shape (7, 5), expected (7, 6)" in out


def test_token_caches_are_refused_for_a_reference_folder(capsys, imagenet):
    root, _ = imagenet
    assert main(["prepare", str(root), "--tokens", "dinov2-vit-b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repa prepare: error: ") and "drop --tokens" in err[0]
    assert not (root / "tokens").exists()


def test_an_mmdit_trains_from_a_uvit_coco_folder_in_one_command(tmp_path, tiny_dinov2):
    """``repa train --preset MMDiT-REPA-COCO-256 --data.path DIR``: U-ViT's features folder as it is (latents from
    the moments, a caption's tokens drawn per item, the empty context for dropout), DINOv2 live on the PNGs; the
    rerun resumes from the checkpoint."""
    root = tmp_path / "coco256_features"
    write_uvit_coco(root, n=6, res=32, latent=4, tokens=7, width=6)
    run = tmp_path / "run"
    argv = ["train", "--preset", "MMDiT-REPA-COCO-256", "--data.path", str(root), "--model.context-dim", "6",
            "--run-dir", str(run), "--encoder-weights", str(tiny_dinov2), *TINY]
    assert main([*argv, "--max-steps", "2"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == "MMDiT-2x32/2" and config["data"]["path"] == str(root)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["loss"]) and m["align_loss"] != 0 for m in metrics)    # the teacher ran
    assert main([*argv, "--max-steps", "3"]) == 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
