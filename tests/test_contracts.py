"""The seams between the parts: every registered model trains through its objective, guidance is one wrapper,
configs derive what they can, old configs still load, and ``repa/`` has no import circles and no import that runs
back up its layers."""
import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import repa
from repa.cli import main
from repa.config import ObjectiveConfig, TrainConfig, to_dict, train_config_from_dict
from repa.guidance import GuidedModel
from repa.models import MODELS, build_model, model_config
from repa.objectives import OBJECTIVES, repa_loss

PACKAGE = Path(repa.__file__).parent


# ---- models x objectives -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_every_parameter_of_every_model_gets_a_gradient_through_its_objective(name):
    """timm's habit: a parameter that the loss never reaches is a bug (a layer left out of forward, a detach)."""
    patch, text = MODELS[name]["patch_size"], name.startswith("MMDiT-")      # MMDiT: caption tokens, no labels
    cfg = model_config(name, depth=2, hidden_size=32, num_heads=2, input_size=2 * patch, in_channels=2,
                       num_classes=0 if text else 3, encoder_depth=1, encoder_dims=(5, 7), projector_dim=16,
                       context_dim=6)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with torch.no_grad():                     # break adaLN-Zero / the zero output layer so every path carries signal
        for param_name, p in model.named_parameters():
            if "adaLN" in param_name or "final_layer.linear" in param_name:
                p.normal_(std=0.1)
    kind = next(k for k, objective in OBJECTIVES.items() if objective.prediction == cfg.prediction)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 2, cfg.input_size, cfg.input_size, generator=gen)
    tokens = [torch.randn(4, cfg.num_tokens, e, generator=gen) for e in cfg.encoder_dims]
    labels = torch.randn(4, 3, 6, generator=gen) if text else torch.tensor([0, 1, 2, cfg.null_class])
    out = repa_loss(model.forward_features, x0, labels, tokens, ObjectiveConfig(kind=kind),
                    t=torch.tensor([0.1, 0.4, 0.7, 0.95]), noise=torch.randn(x0.shape, generator=gen))
    out.total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"{name}: no gradient for {missing}"


# ---- guidance ------------------------------------------------------------------------------------------------------

class Affine(torch.nn.Module):
    """out = x + y (per-class offset), in every channel; no .config, so nothing can be read from it."""

    def forward(self, x, t, y):
        return x + y.view(-1, 1, 1, 1).to(x.dtype)


def test_guided_model_mixes_only_the_first_k_channels():
    x, labels = torch.zeros(2, 3, 1, 1, dtype=torch.float64), torch.tensor([2, 4])
    full = GuidedModel(Affine(), labels, cfg_scale=3.0, null_class=1)(x, 0.5)
    first = GuidedModel(Affine(), labels, cfg_scale=3.0, null_class=1, guided_channels=1)(x, 0.5)
    expected = (1 + 3.0 * (labels - 1)).double().view(-1, 1, 1, 1)          # u + w (c - u), u = 1
    assert torch.equal(full, expected.expand(2, 3, 1, 1))
    assert torch.equal(first[:, :1], expected) and torch.equal(first[:, 1:], labels.double().view(-1, 1, 1, 1)
                                                                .expand(2, 2, 1, 1))


def test_samplers_need_no_config_without_guidance_and_take_null_class_and_dtype_as_arguments():
    noise, labels = torch.randn(2, 1, 2, 2), torch.tensor([0, 1])
    plain = repa.sample(Affine(), noise, labels, steps=4)                    # no .config, no parameters
    assert plain.dtype == noise.dtype and torch.isfinite(plain).all()
    with pytest.raises(ValueError, match="null_class"):
        repa.sample(Affine(), noise, labels, steps=4, cfg_scale=2.0)
    guided = repa.sample(Affine(), noise, labels, steps=4, cfg_scale=2.0, null_class=0, dtype=torch.float64)
    assert not torch.equal(guided, plain)


# ---- configs -------------------------------------------------------------------------------------------------------

def test_encoder_widths_are_derived_and_checked_at_config_time(capsys):
    assert main(["train", "--preset", "SiT-B/2-REPA-256", "--encoders", "clip-vit-L", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["encoder_dims"] == [1024]
    assert main(["train", "--preset", "SiT-B/2-REPA-256", "--encoders", "clip-vit-L", "--model.encoder_dims", "768",
                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model.encoder_dims" in err and "1024" in err and "Traceback" not in err


def test_configs_saved_with_objective_prediction_still_load():
    old = to_dict(dataclasses.replace(TrainConfig(), objective=ObjectiveConfig(kind="iddpm")))
    del old["model"]["prediction"]
    old["objective"]["prediction"] = "epsilon"
    cfg = train_config_from_dict(old)
    assert cfg.model.prediction == "epsilon" and cfg.objective.kind == "iddpm"


# ---- the import graph ----------------------------------------------------------------------------------------------

# The demo's pipeline and report still import each other; this entry must go once they no longer do.
ALLOWED_CYCLES = []


def _import_graph() -> dict[str, set[str]]:
    """module -> the repa modules it imports anywhere (function bodies included), from the source alone."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    edges.add(target if target in names else node.module)
        graph[name] = {e for e in edges if e in names and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_repa_has_no_import_circles():
    graph = _import_graph()
    assert {"repa.samplers", "repa.guidance", "repa.objectives", "repa.losses"} <= set(graph)
    assert "repa.guidance" in graph["repa.samplers"] and "repa.guidance" in graph["repa.diffusion.sampling"]
    cycles = _cycles(graph)
    assert [c for c in cycles if c not in ALLOWED_CYCLES] == []
    assert all(c in cycles for c in ALLOWED_CYCLES), "an allowed cycle is gone: remove it from ALLOWED_CYCLES"


# The package in layers, bottom first: a module imports only modules of its own layer or of layers below it
# (function-body imports count). Each module belongs to the layer of the longest name below that it starts with.
LAYERS = [
    ("foundation: config, paths, file and device guards",
     ["repa", "repa.config", "repa.e2e_config", "repa.config_validate", "repa.model_names", "repa.fields", "repa.logging_config",
      "repa.paths", "repa.utils", "repa.integrity", "repa.offline", "repa.interrupt",
      "repa.runlock", "repa.preflight", "repa.conditions", "repa.guidance", "repa.ema"]),
    ("building blocks: networks, diffusion math, encoders, the VAE, data, metrics",
     ["repa.models", "repa.diffusion", "repa.losses", "repa.objectives", "repa.teachers", "repa.encoders", "repa.autoencoder",
      "repa.autoencoder_repae", "repa.vae_losses", "repa.e2e",
      "repa.text_encoders", "repa.hub", "repa.distributed", "repa.flops", "repa.data", "repa.data.layouts", "repa.evaluation.fid", "repa.evaluation.inception",
      "repa.evaluation.npz", "repa.evaluation.prdc", "repa.analysis.metrics", "repa.analysis.probe",
      "repa.analysis.plots", "repa.analysis.features"]),
    ("pipelines: checkpoints, sampling, training, evaluation, analysis",
     ["repa.checkpoint", "repa.config_sources", "repa.samplers", "repa.presets", "repa.visualize", "repa.training", "repa.training_utils",
      "repa.evaluation", "repa.analysis"]),
    ("the demo", ["repa.demo"]),
    ("the command line", ["repa.cli", "repa.cli_parsing", "repa.__main__", "repa.commands", "repa.typed_cli", "repa.train_cli",
                          "repa.data.prepare_cli"]),
]


def _layer_of(module: str) -> int | None:
    best = None
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    return None if best is None else best[0]


def _upward_imports(graph: dict[str, set[str]], module: str) -> list[str]:
    """The imports of ``module`` that reach a higher layer than its own, as "a (layer) -> b (layer)"."""
    own = _layer_of(module)
    return [f"{module} ({LAYERS[own][0]}) -> {target} ({LAYERS[_layer_of(target)][0]})"
            for target in sorted(graph[module]) if _layer_of(target) > own]


def test_layer_checker_finds_a_planted_upward_import():
    graph = {"repa.preflight": {"repa.config", "repa.data.checks"}, "repa.cli": {"repa.preflight"}}
    assert _upward_imports(graph, "repa.cli") == []
    assert _upward_imports(graph, "repa.preflight") == [
        f"repa.preflight ({LAYERS[0][0]}) -> repa.data.checks ({LAYERS[1][0]})"]
    assert _layer_of("repa.data.prepare_cli") == 4 and _layer_of("repa.data.store") == 1
    assert _layer_of("repa.evaluation.generate") == 2 and _layer_of("repa.evaluation.fid") == 1


GRAPH = _import_graph()       # read once for the cases below


def test_every_module_has_a_layer():
    assert [m for m in sorted(GRAPH) if _layer_of(m) is None] == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_runs_back_up_the_layers(module):
    """One case per module, so a failure names the module (e.g. ``[repa.preflight]``) and the import."""
    assert _upward_imports(GRAPH, module) == []
