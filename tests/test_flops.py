"""The analytic FLOP count against the paper's figure and a direct count of the model's matmuls."""
import torch

from repa.flops import sit_forward_macs
from repa.models import build_model, model_config


def test_sit_xl2_forward_matches_paper_figure():
    macs = sit_forward_macs(model_config("SiT-XL/2", input_size=32))
    assert abs(macs / 1e9 - 118.6) < 0.6          # SiT/DiT papers: SiT-XL/2 at 256 px is 118.6 G MACs


def test_count_matches_traced_matmuls():
    cfg = model_config("SiT-S/2", depth=2, hidden_size=64, num_heads=2, input_size=8, encoder_depth=1)
    model = build_model(cfg)
    total = 0

    def linear_hook(module, inputs, output):
        nonlocal total
        total += inputs[0].numel() // inputs[0].shape[-1] * module.in_features * module.out_features
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(linear_hook)
    model(torch.randn(1, 4, 8, 8), torch.rand(1), torch.tensor([0]))
    n, d = cfg.num_tokens, cfg.hidden_size
    attention = cfg.depth * 2 * n * n * d
    patch_embed = n * 4 * cfg.in_channels * d
    assert sit_forward_macs(cfg) == total + attention + patch_embed
