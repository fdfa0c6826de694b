"""The SD-VAE wrapper on a tiny random AutoencoderKL saved to disk, and latents stored by ``repa prepare``."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from repa.autoencoder import LATENT_SCALE, decode, encode_moments, load_vae, sample_latents
from repa.data import open_dataset
from repa.data.prepare import prepare_dataset
from repa.data.verify import verify_dataset


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return path


def _tree(root, n=7, size=40):
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        os.makedirs(root / cls)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_encode_moments_is_the_posterior_of_images_in_minus1_1(vae_dir):
    vae = load_vae(vae_dir)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    mean, std = encode_moments(vae, images)
    assert mean.shape == std.shape == (3, 4, 4, 4) and mean.dtype == torch.float32
    # independent: the encoder and quant conv by hand, moments = [mean, log-variance] (clamped as diffusers does)
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(images.float() / 127.5 - 1.0))
    ref_mean, logvar = moments.chunk(2, dim=1)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(std, torch.exp(0.5 * logvar.clamp(-30.0, 20.0)))
    with pytest.raises(ValueError, match="uint8 RGB"):
        encode_moments(vae, images.float())


def test_sample_latents_and_decode(vae_dir):
    vae = load_vae(vae_dir)
    mean = torch.full((4000, 4, 2, 2), 2.0)
    std = torch.full((4000, 4, 2, 2), 0.5)
    z = sample_latents(mean, std, generator=torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0 * LATENT_SCALE) < 0.01 and abs(z.std().item() - 0.5 * LATENT_SCALE) < 0.01
    z2 = sample_latents(mean.half(), std.half(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, z2)
    images = decode(vae, torch.zeros(2, 4, 4, 4))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    with torch.no_grad():   # decode divides by the scale and maps [-1, 1] to [0, 255] with truncation
        x = vae.decode(torch.ones(1, 4, 4, 4)).sample
    expected = torch.clamp(127.5 * (x + 1), 0, 255).to(torch.uint8)
    assert torch.equal(decode(vae, torch.ones(1, 4, 4, 4) * LATENT_SCALE), expected)


def test_load_vae_errors_say_how_to_provide_weights(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist.*huggingface-cli download"):
        load_vae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_vae(tmp_path / "empty")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # this machine has no network
    with pytest.raises(FileNotFoundError, match="stabilityai/sd-vae-ft-mse.*--vae DIR"):
        load_vae("stabilityai/sd-vae-ft-mse")


def test_stable_diffusion_folder_with_vae_subfolder(vae_dir, tmp_path):
    os.symlink(vae_dir, tmp_path / "vae")
    assert load_vae(tmp_path).config.latent_channels == 4


def test_latents_round_trip_through_the_store(vae_dir, tmp_path):
    src = _tree(tmp_path / "src")
    out = prepare_dataset(src, tmp_path / "ds", resolution=32, chunk_size=4, vae=str(vae_dir), batch_size=3,
                          num_workers=0, progress=False)
    ds = open_dataset(out)
    assert ds.has_latents and ds.manifest["latents"]["vae"] == str(vae_dir)
    assert ds.manifest["latents"]["scale"] == LATENT_SCALE
    idx = np.array([13, 2, 5, 0])
    batch = ds.get_batch(idx)
    assert batch["latent_mean"].shape == (4, 4, 4, 4) and batch["latent_mean"].dtype == np.float32
    mean, std = encode_moments(load_vae(vae_dir), torch.from_numpy(batch["image"]))
    np.testing.assert_allclose(batch["latent_mean"], mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch["latent_std"], std.numpy(), rtol=1e-5, atol=1e-6)
    assert verify_dataset(out) == []


def test_latents_resume_and_can_be_added_later(vae_dir, tmp_path):
    src = _tree(tmp_path / "src")
    kw = dict(resolution=32, chunk_size=4, vae=str(vae_dir), latent_dtype="float16", num_workers=0,
              progress=False)
    prepare_dataset(src, tmp_path / "full", **kw)
    with pytest.raises(RuntimeError, match="injected"):
        prepare_dataset(src, tmp_path / "cut", _fail_after_chunks=1, **kw)
    prepare_dataset(src, tmp_path / "cut", **kw)
    # images first, latents added by a second run with --vae: same bytes as preparing both at once
    prepare_dataset(src, tmp_path / "later", **{**kw, "vae": None})
    assert not open_dataset(tmp_path / "later").has_latents
    prepare_dataset(src, tmp_path / "later", **kw)
    files = {}
    for name in ("full", "cut", "later"):
        root = tmp_path / name
        files[name] = {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
                       for d, _, fs in os.walk(root) for f in fs}
    assert files["cut"] == files["full"] and files["later"] == files["full"]
    assert open_dataset(tmp_path / "full").get_batch([0])["latent_std"].dtype == np.float16


def _tiny_kl(**config):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=16, **config).eval()


@pytest.mark.parametrize("config", [
    dict(scaling_factor=0.13025),                                          # SDXL's VAE
    dict(scaling_factor=0.3611, shift_factor=0.1159),                      # FLUX's convention
    dict(scaling_factor=1.0, latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 0.5, 1.0, 3.0]),  # REPA-E's -hf
    dict(scaling_factor=0.5, latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 0.5, 1.0, 3.0]),
])
def test_a_vae_config_normalisation_is_folded_into_the_latents(tmp_path, config):
    """A diffusers VAE whose config normalises its latents otherwise than the SD-VAE's 0.18215 gives repa's
    model-space latents in its own convention (diffusers' formula), decodes them back, and a saved copy of the
    loaded VAE is not normalised twice."""
    raw = _tiny_kl(**config)
    raw.save_pretrained(tmp_path / "vae")
    vae = load_vae(tmp_path / "vae")
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    mean, std = encode_moments(vae, images)
    with torch.no_grad():
        post = raw.encode(images.float() / 127.5 - 1).latent_dist
    sf = config["scaling_factor"]
    mu = torch.tensor(config.get("latents_mean", [config.get("shift_factor", 0.0)] * 4)).view(1, -1, 1, 1)
    sd = torch.tensor(config.get("latents_std", [1.0] * 4)).view(1, -1, 1, 1)
    assert torch.allclose(mean * LATENT_SCALE, (post.mean - mu) * sf / sd, atol=1e-5)
    assert torch.allclose(std * LATENT_SCALE, post.std * sf / sd, atol=1e-5)
    model_space = (post.mean - mu) * sf / sd
    with torch.no_grad():
        want = raw.decode(post.mean).sample
    got = vae.decode(model_space / LATENT_SCALE).sample
    assert torch.allclose(got, want, atol=1e-4)
    assert vae.config.scaling_factor == LATENT_SCALE and vae.config.latents_mean is None
    vae.save_pretrained(tmp_path / "copy")
    again = encode_moments(load_vae(tmp_path / "copy"), images)[0]
    assert torch.allclose(again, mean, atol=1e-6)


def test_the_sd_vae_is_loaded_as_it_is_and_an_unfoldable_normalisation_is_refused(tmp_path):
    from repa.config import ConfigError
    raw = _tiny_kl(scaling_factor=LATENT_SCALE)
    raw.save_pretrained(tmp_path / "sd")
    loaded = load_vae(tmp_path / "sd").state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in raw.state_dict().items())
    _tiny_kl(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False) \
        .save_pretrained(tmp_path / "flux-like")
    with pytest.raises(ConfigError, match="no quant_conv"):
        load_vae(tmp_path / "flux-like")
    _tiny_kl(scaling_factor=1.0, latents_mean=[0.0] * 3, latents_std=[1.0] * 3).save_pretrained(tmp_path / "bad")
    with pytest.raises(ConfigError, match="3/3 values for 4 latent channels"):
        load_vae(tmp_path / "bad")
