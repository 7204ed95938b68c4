"""The hf backend's stop strings (EOS and in-flight updates are in test_inflight.py)."""

from __future__ import annotations

import numpy as np
import pytest

from asyncrl.generators.backends.hf import HFBackend
from asyncrl.launch.tiny import CHARS
from asyncrl.protocol.settings import SamplingParams

PROMPT = np.array([5, 6, 7, 8], np.int32)


def test_stop_strings_end_a_sample_on_the_completing_token(tiny_causal_lm):
    backend = HFBackend(tiny_causal_lm, seed=0, eos_token_id=10**6)
    tok = backend.tokenizer
    stop = tuple(CHARS[:20])
    samples = backend.generate(PROMPT, 16, SamplingParams(max_new_tokens=8, stop=stop))
    stopped = 0
    for s in samples:
        text = tok.decode(s.tokens.tolist(), skip_special_tokens=True)
        before = tok.decode(s.tokens[:-1].tolist(), skip_special_tokens=True)
        if s.finish_reason == "stop":
            stopped += 1
            # The last kept token completed a stop string; none was complete before it.
            assert any(x in text for x in stop) and not any(x in before for x in stop)
        else:
            assert len(s.tokens) == 8 and not any(x in text for x in stop)
        assert len(s.logprobs) == len(s.tokens) == len(s.versions)
    assert stopped > 0


def test_no_stop_strings_runs_to_the_limit(tiny_causal_lm):
    backend = HFBackend(tiny_causal_lm, seed=0, eos_token_id=10**6)
    samples = backend.generate(PROMPT, 4, SamplingParams(max_new_tokens=5, stop=("\x00",)))
    assert all(len(s.tokens) == 5 and s.finish_reason == "length" for s in samples)


def _alone_logprobs(backend: HFBackend, prompt: np.ndarray, tokens: np.ndarray, temp: float):
    """Teacher-forced log-probabilities of `tokens` after `prompt`, the sequence alone in its
    batch (no padding, positions 0..): what sampling it alone would have drawn them from."""
    import torch

    ids = torch.as_tensor(np.concatenate([prompt, tokens]).astype(np.int64))[None]
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits / temp, dim=-1)
    return logp.gather(-1, torch.as_tensor(tokens.astype(np.int64))[:, None])[:, 0].numpy()


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> str:
    """A 1-layer GPT-2: absolute position embeddings, so a row whose positions did not count
    from its own first token would get other logits (rotary models like Qwen2 only see
    position differences, which left padding does not change)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from asyncrl.launch.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("tiny-gpt2")
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("model", ["tiny_causal_lm", "tiny_gpt2"])
def test_groups_of_unequal_prompts_sample_as_each_would_alone(model, request):
    # Three prompts of lengths 4, 2 and 6 in one batch: the shorter ones are left-padded.
    # Every sampled token's behaviour logprob must equal its log-probability with the
    # sequence alone (positions from 0, nothing padded): the left padding is masked out and
    # positions count from each row's first real token. Equal up to float rounding only.
    backend = HFBackend(request.getfixturevalue(model), seed=0, eos_token_id=10**6)
    prompts = [PROMPT, np.array([9, 3], np.int32), np.array([4, 4, 5, 6, 7, 2], np.int32)]
    params = SamplingParams(temperature=0.7, max_new_tokens=6)
    groups = backend.generate_groups(prompts, [3, 2, 1], params)
    assert [len(g) for g in groups] == [3, 2, 1]
    for prompt, group in zip(prompts, groups):
        for s in group:
            assert len(s.tokens) == len(s.logprobs) == 6 and s.finish_reason == "length"
            expect = _alone_logprobs(backend, prompt, s.tokens, 0.7)
            np.testing.assert_allclose(s.logprobs, expect, atol=2e-5)
    # Prompts of one length need no padding: the batch is the plain one, and a lone group
    # through generate_groups is a lone group through generate.
    same = backend.generate_groups([PROMPT, PROMPT[::-1].copy()], [2, 2], params)
    for prompt, group in zip([PROMPT, PROMPT[::-1]], same):
        for s in group:
            expect = _alone_logprobs(backend, prompt, s.tokens, 0.7)
            np.testing.assert_allclose(s.logprobs, expect, atol=2e-5)
