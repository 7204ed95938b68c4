"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> str:
    """A randomly initialised 2-layer Qwen2 with the tiny task's character tokenizer, saved
    in Hugging Face format (builds in well under a second)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from asyncrl.launch.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("tiny-causal-lm")
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
