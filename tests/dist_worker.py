"""Run by test_distributed.py under torchrun: train the tiny config on the tiny dataset, in N processes."""
import dataclasses
import sys

import numpy as np

from repa.data.memory import ArrayDataset
from repa.training import train
from tests.conftest import PatchTeacher, tiny_train_config

run_dir, accum = sys.argv[1], int(sys.argv[2])
parallel = sys.argv[3] if len(sys.argv) > 3 else "ddp"
max_steps = int(sys.argv[4]) if len(sys.argv) > 4 else 6
align_stop = int(sys.argv[5]) if len(sys.argv) > 5 else 0
rng = np.random.default_rng(0)
labels = rng.integers(0, 3, 64)
images = (rng.random((64, 1, 8, 8)) * 255).astype(np.uint8)
cfg = tiny_train_config(run_dir, max_steps=max_steps, ckpt_every=3, keep_last=5, grad_accum_steps=accum,
                        parallel=parallel)
if align_stop:
    cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, align_stop_step=align_stop))
train(cfg, dataset=ArrayDataset(images, labels, num_classes=3), encoders=[PatchTeacher(4, 16)], progress=False)
