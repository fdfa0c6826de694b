"""REPA: representation alignment for generation (Yu et al., ICLR 2025).

Public API (imported lazily; importing ``repa`` itself loads nothing heavy):

- ``repa.load_model(path)``: a ``LoadedModel`` (``.model``, ``.config``, ``.train_config``, ``.step``) with the EMA
  network from this project's or the reference REPA checkpoints.
- ``repa.load_model(folder_or_hub_id)`` also reads a folder written by ``repa export`` / ``repa.export_model(ckpt,
  out)`` (``model.safetensors`` + ``config.json``) and a Hugging Face Hub id of one.
- ``repa.sample(model, noise, labels, config=repa.SampleConfig(...), **overrides)``; ``model`` is a network or a
  ``LoadedModel``. ``repa.generate_images(model, num, config, vae=...)`` gives uint8 images (latents decoded);
  ``repa.to_pil(image)`` turns one into a PIL image ("L" or "RGB").
- ``repa.build_model(cfg)``, ``repa.model_config(name, **overrides)``, ``repa.MODELS``.
- ``repa.train(cfg)`` with ``repa.TrainConfig``.
"""
__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "repa.checkpoint",
    "LoadedModel": "repa.checkpoint",
    "sample": "repa.samplers",
    "build_model": "repa.models",
    "model_config": "repa.models",
    "MODELS": "repa.models",
    "export_model": "repa.checkpoint",
    "generate_images": "repa.evaluation.generate",
    "to_pil": "repa.visualize",
    "SampleConfig": "repa.config",
    "train": "repa.training",
    "TrainConfig": "repa.config",
    "ModelConfig": "repa.config",
    "ObjectiveConfig": "repa.config",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'repa' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + ["__version__"]
