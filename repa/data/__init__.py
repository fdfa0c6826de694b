"""Dataset preparation (``repa prepare``) and fast random access to prepared datasets.

``open_dataset(path)`` opens a directory written by ``prepare_dataset``, ``open_folder(path)`` that or one of the
reference's own folders (``repa.data.layouts``); ``BatchLoader`` (repa.data.loader) streams
it. ``Dataset`` is the interface that an opened dataset and ``repa.data.memory.ArrayDataset`` implement. Preparation, verification and token caches are imported on first use, so importing this package stays cheap.
"""
from repa.data.protocol import Dataset
from repa.data.store import DataError, PreparedDataset, open_dataset

__all__ = ["DataError", "Dataset", "PreparedDataset", "open_dataset", "open_folder", "prepare_dataset",
           "verify_dataset", "build_token_cache"]


def __getattr__(name: str):
    if name == "prepare_dataset":
        from repa.data.prepare import prepare_dataset
        return prepare_dataset
    if name == "open_folder":                  # a prepared dataset or a reference layout (repa.data.layouts)
        from repa.data.layouts import open_folder
        return open_folder
    if name == "verify_dataset":
        from repa.data.verify import verify_dataset
        return verify_dataset
    if name == "build_token_cache":
        from repa.data.tokens import build_token_cache
        return build_token_cache
    raise AttributeError(f"module 'repa.data' has no attribute {name!r}")
