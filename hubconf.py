"""``torch.hub`` entry points of a clone of this repository.

    model = torch.hub.load("path/to/repa", "repa_model", "runs/exp/export", source="local")
    loaded = torch.hub.load("path/to/repa", "load_model", "owner/name", source="local")   # a Hub id of an export

``repa_model`` returns the network (eval mode, ``model.config`` its ModelConfig); ``load_model`` returns the
``repa.LoadedModel`` (network, training config, step). Both read what ``repa.load_model`` reads: a folder written by
``repa export`` (``model.safetensors`` + ``config.json``), a Hugging Face Hub id of one, or a checkpoint file.
"""
dependencies = ["torch", "safetensors", "huggingface_hub"]


def load_model(path, which: str = "ema", device: str = "cpu", **kwargs):
    """The ``repa.LoadedModel`` of ``path`` (see ``repa.load_model``)."""
    from repa.checkpoint import load_model as _load
    return _load(path, which=which, device=device, **kwargs)


def repa_model(path, which: str = "ema", device: str = "cpu", **kwargs):
    """The network of ``path`` in eval mode (``model.config`` is its ModelConfig)."""
    return load_model(path, which=which, device=device, **kwargs).model
