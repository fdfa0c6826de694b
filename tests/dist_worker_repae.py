"""Run by test_repae.py under torchrun: the tiny end-to-end (REPA-E) run in N processes."""
import sys

from repa.training import train
from tests.conftest import PatchTeacher
from tests.test_repae import e2e_config, rgb_images

run_dir, vae_dir, accum = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = e2e_config(run_dir, vae_dir, disc_weight=0.0)         # the discriminator's BatchNorm is per rank (as REPA-E's)
cfg = cfg.__class__(**{**cfg.__dict__, "grad_accum_steps": accum, "max_steps": 3, "ckpt_every": 3})
train(cfg, dataset=rgb_images(), encoders=[PatchTeacher(4, 16, 3)], progress=False)
