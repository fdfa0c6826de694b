"""The frozen text encoder of the text-to-image path: CLIP's text transformer through ``transformers``.

The REPA reference trains its MMDiT on U-ViT's MS-COCO features (Bao et al. 2023, thu-ml/U-ViT
``libs/clip.py``, ``FrozenCLIPEmbedder``): each caption is tokenised by CLIP's tokenizer, padded and truncated to
77 tokens (``padding="max_length"``), and the text transformer's last hidden state (77, 768) of
``openai/clip-vit-large-patch14`` is the context; the empty caption ``""`` gives the null context. ``encode`` does
exactly that for any CLIP text model (a hub id or a local folder holding the model and its tokenizer).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from repa.autoencoder import looks_like_path

DEFAULT_TEXT_ENCODER = "openai/clip-vit-large-patch14"     # U-ViT's default, the reference's MS-COCO contexts


class TextEncoder:
    """CLIP tokenizer + text transformer, frozen, in eval mode.

    Attributes:
        source: the hub id or folder it was loaded from.
        context_length: tokens per caption L (the tokenizer's ``model_max_length``, 77 for CLIP).
        width: token width D (768 for CLIP ViT-L/14).
    """

    def __init__(self, tokenizer, model, source: str, device=None):
        self.tokenizer, self.model, self.source = tokenizer, model.eval().requires_grad_(False), source
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model.to(self.device)
        self.context_length = int(min(tokenizer.model_max_length, model.config.max_position_embeddings))
        self.width = int(model.config.hidden_size)

    @torch.no_grad()
    def encode(self, prompts: list[str], batch_size: int = 64) -> np.ndarray:
        """float32 (B, L, D): the last hidden state of each prompt padded/truncated to ``context_length`` tokens."""
        out = []
        for start in range(0, len(prompts), batch_size):
            tokens = self.tokenizer(list(prompts[start:start + batch_size]), truncation=True, padding="max_length",
                                    max_length=self.context_length, return_tensors="pt")
            hidden = self.model(input_ids=tokens["input_ids"].to(self.device)).last_hidden_state
            out.append(hidden.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.context_length, self.width), np.float32)

    def empty_context(self) -> np.ndarray:
        """float32 (L, D): the empty caption's tokens, the null value of guidance and caption dropout."""
        return self.encode([""])[0]


def load_text_encoder(source: str = DEFAULT_TEXT_ENCODER, device=None) -> TextEncoder:
    """Load a CLIP text encoder (``CLIPTokenizer`` + ``CLIPTextModel``) from a hub id or a local folder.

    Raises:
        FileNotFoundError: the folder does not exist or lacks the model or tokenizer, or the hub id cannot be
            fetched (offline); the message says how to provide it locally.
    """
    from transformers import CLIPTextModel, CLIPTokenizer
    from repa.offline import hub_is_reachable, offline_hint
    source = os.fspath(source)
    expanded = os.path.expanduser(source)
    how = (f"download it once where the internet is reachable (`hf download {DEFAULT_TEXT_ENCODER} --local-dir "
           f"clip-vit-large-patch14`) and pass that folder (`--text-encoder DIR`)")
    if os.path.isdir(expanded):
        source = expanded
    elif looks_like_path(source):
        raise FileNotFoundError(f"text encoder folder {source!r} does not exist; {how}")
    try:
        try:                         # the local cache first: no network round trips when it is already here
            tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=True)
            model = CLIPTextModel.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):
            if os.path.isdir(source) or not hub_is_reachable():
                raise
            tokenizer, model = CLIPTokenizer.from_pretrained(source), CLIPTextModel.from_pretrained(source)
    except (OSError, ValueError) as exc:
        why = str(exc).splitlines()[0] if os.path.isdir(source) or hub_is_reachable() else offline_hint()
        raise FileNotFoundError(f"could not load the text encoder {source!r}: {why}; {how}") from None
    return TextEncoder(tokenizer, model, source, device)


__all__ = ["DEFAULT_TEXT_ENCODER", "TextEncoder", "load_text_encoder"]
