"""Greedy accuracy and sampled metrics against hand-computable models and a hand-rolled loop."""

from __future__ import annotations

import pytest
import torch

from asyncrl.launch.tiny import TinyTaskConfig, build_tokenizer, tiny_model_config
from asyncrl.learner.evaluation import (
    generate_completions,
    greedy_accuracy,
    sampled_metrics,
    sampled_pass_at_k,
)

PROMPTS = ["1+2=", "13+4=", "5+61=", "99+99=", "0+0="]


def make_model(tok, seed=0):
    from transformers import Qwen2ForCausalLM

    cfg = TinyTaskConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    mcfg = tiny_model_config(cfg, vocab_size=len(tok))
    mcfg.tie_word_embeddings = False
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(mcfg)


def constant_model(tok, token: str):
    """A model whose next token is always `token`: the head ignores the hidden state."""
    model = make_model(tok)
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-50.0)
        head.bias[tok.convert_tokens_to_ids(token)] = 50.0
    model.lm_head = head
    return model


def hand_greedy(model, tok, prompt, max_new_tokens):
    """One prompt at a time, no padding, no cache: the reference greedy decoder."""
    ids = tok.encode(prompt, add_special_tokens=False)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True).strip()


def test_constant_digit_model_is_hand_computable():
    tok = build_tokenizer()
    model = constant_model(tok, "7")
    rows = [
        {"prompt": "3+4=", "answer": "77"},
        {"prompt": "10+67=", "answer": "77"},
        {"prompt": "1+6=", "answer": "7"},
        {"prompt": "0+0=", "answer": "777"},
    ]
    # Without EOS the completion is exactly max_new_tokens sevens.
    assert greedy_accuracy(model, tok, rows, max_new_tokens=2) == 0.5
    assert greedy_accuracy(model, tok, rows, max_new_tokens=1) == 0.25
    assert sampled_pass_at_k(model, tok, rows, 4, 1.0, max_new_tokens=3) == 0.25


def test_eos_ends_the_completion():
    tok = build_tokenizer()
    model = constant_model(tok, "<eos>")
    rows = [{"q": "3+4=", "a": ""}, {"q": "1+1=", "a": "2"}]
    assert greedy_accuracy(model, tok, rows, prompt_field="q", answer_field="a") == 0.5


def test_matches_hand_rolled_greedy_with_left_padding():
    tok = build_tokenizer()
    model = make_model(tok, seed=3)
    with torch.no_grad():  # make EOS likely somewhere so truncation at EOS is exercised
        model.lm_head.weight[tok.eos_token_id] *= 4
    ref = [hand_greedy(model, tok, p, 6) for p in PROMPTS]
    got = generate_completions(model, tok, PROMPTS, max_new_tokens=6, batch_size=2)
    assert [g[0] for g in got] == ref
    rows = [
        {"prompt": p, "answer": r if i % 2 == 0 else r + "x"}
        for i, (p, r) in enumerate(zip(PROMPTS, ref))
    ]
    assert greedy_accuracy(model, tok, rows, max_new_tokens=6) == pytest.approx(3 / 5)


def test_restores_train_mode_and_padding_side():
    tok = build_tokenizer()
    tok.padding_side = "right"
    model = make_model(tok).train()
    greedy_accuracy(model, tok, [{"prompt": "1+1=", "answer": "2"}])
    assert model.training and tok.padding_side == "right"
    model.eval()
    greedy_accuracy(model, tok, [{"prompt": "1+1=", "answer": "2"}])
    assert not model.training


def test_sampled_metrics_shapes_and_bounds():
    tok = build_tokenizer()
    model = make_model(tok)
    torch.manual_seed(0)
    comps = generate_completions(
        model, tok, PROMPTS, num_samples=3, temperature=1.0, max_new_tokens=3, batch_size=4
    )
    assert len(comps) == len(PROMPTS) and all(len(c) == 3 for c in comps)
    rows = [{"prompt": p, "answer": c[0]} for p, c in zip(PROMPTS, comps)]
    torch.manual_seed(0)
    m = sampled_metrics(model, tok, rows, 3, 1.0, max_new_tokens=3, batch_size=4)
    # Same seed, same batching: the first sample of every row is its answer.
    assert m["pass_at_k"] == 1.0
    assert 1 / 3 <= m["sample_accuracy"] <= 1.0 and 0.0 <= m["maj_at_k"] <= 1.0
    assert greedy_accuracy(model, tok, []) == 0.0


@pytest.mark.gpu
def test_cuda_bfloat16():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tok = build_tokenizer()
    model = constant_model(tok, "7").to("cuda", torch.bfloat16)
    rows = [{"prompt": "3+4=", "answer": "77"}, {"prompt": "1+6=", "answer": "7"}]
    assert greedy_accuracy(model, tok, rows, max_new_tokens=2) == 0.5
