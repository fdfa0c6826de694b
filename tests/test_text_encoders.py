"""repa.text_encoders: a tiny random CLIP text model and tokenizer saved to a folder and loaded through the same
code as ``openai/clip-vit-large-patch14`` (U-ViT's FrozenCLIPEmbedder: pad to max length, last hidden state)."""
import numpy as np
import pytest
import torch

from repa.text_encoders import DEFAULT_TEXT_ENCODER, load_text_encoder


def test_encode_is_the_last_hidden_state_of_the_padded_tokens(tiny_clip_dir):
    enc = load_text_encoder(str(tiny_clip_dir))
    assert (enc.context_length, enc.width) == (12, 16)
    vocab = enc.tokenizer.get_vocab()
    # written out: <|startoftext|>, "the" (one merged word), <|endoftext|>, then <|endoftext|> padding to 12
    ids = torch.tensor([[vocab["<|startoftext|>"], vocab["the</w>"]] + [vocab["<|endoftext|>"]] * 10])
    with torch.no_grad():
        want = enc.model(input_ids=ids).last_hidden_state[0].numpy()
    got = enc.encode(["the", "a long caption of many words that is cut at twelve tokens", ""])
    assert got.shape == (3, 12, 16) and got.dtype == np.float32
    assert np.allclose(got[0], want, atol=1e-6)
    assert np.array_equal(got[2], enc.empty_context())
    assert not np.allclose(got[0], got[2])
    one_by_one = np.concatenate([enc.encode([p]) for p in ["the", "an owl"]])
    assert np.allclose(enc.encode(["the", "an owl"], batch_size=1), one_by_one, atol=1e-6)
    assert np.allclose(enc.encode(["the", "an owl"]), one_by_one, atol=1e-5)


def test_missing_text_encoder_says_how_to_provide_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*--text-encoder DIR"):
        load_text_encoder(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="could not load the text encoder"):
        load_text_encoder(str(tmp_path / "empty"))
    assert DEFAULT_TEXT_ENCODER == "openai/clip-vit-large-patch14"
