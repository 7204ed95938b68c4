"""In-flight weight updates in the hf backend, and the learner-side view of mixed versions.

A tiny random Qwen2 generates while a hook swaps in new weights after the second token:
later tokens must carry the new version, re-prefill must make them exact samples of the new
weights over the whole prefix, and the learner must treat the group as its oldest version.
Also: at version 0 the learner's temperature-scaled logprobs equal the generator's
behaviour logprobs (DESIGN.md, "Logprob semantics").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncrl.generators.backends.hf import HFBackend
from asyncrl.learner.logprobs import token_logprobs
from asyncrl.learner.weights import serialize_named_tensors
from asyncrl.protocol.blob import digest_of
from asyncrl.protocol.codec import ProtocolError
from asyncrl.protocol.messages import RolloutGroup
from asyncrl.protocol.settings import SamplingParams
from asyncrl.protocol.validate import RolloutLimits, validate_rollout


@pytest.fixture
def model_dir(tiny_causal_lm) -> str:
    return tiny_causal_lm


def publish(model: torch.nn.Module, scale: float = 0.0) -> tuple[bytes, str]:
    torch.manual_seed(1)
    tensors = {
        n: p.detach().clone() + scale * torch.randn_like(p) for n, p in model.named_parameters()
    }
    blob = serialize_named_tensors(tensors)
    return blob, digest_of(blob)


def backend_with_update(model_dir: str, mode: str) -> tuple[HFBackend, torch.nn.Module]:
    # An EOS id outside the vocabulary: every sample runs to max_new_tokens.
    backend = HFBackend(model_dir, seed=0, eos_token_id=10**6)
    blob0, d0 = publish(backend.model)
    backend.load_weights(blob0, d0, 0)
    blob5, d5 = publish(backend.model, scale=0.5)
    calls = []

    def hook():
        calls.append(backend.version)
        if backend.version == 0:
            backend.load_weights(blob5, d5, 5)

    backend.set_inflight_hook(hook, mode, check_every=2)
    from transformers import AutoModelForCausalLM

    new_model = AutoModelForCausalLM.from_pretrained(model_dir)
    from asyncrl.generators.weights import load_into_model, verify_and_decode

    load_into_model(new_model, verify_and_decode(blob5, d5))
    return backend, new_model.eval()


PROMPT = np.array([5, 6, 7, 8], np.int32)
PARAMS = SamplingParams(temperature=0.8, max_new_tokens=6)


@pytest.mark.parametrize("mode", ["continue", "reprefill"])
def test_tokens_after_the_switch_carry_the_new_version(model_dir, mode):
    backend, _ = backend_with_update(model_dir, mode)
    samples = backend.generate(PROMPT, 3, PARAMS)
    # The hook runs after decode steps 2, 4 (t + 1 = 2, 4): tokens 0-1 were sampled by
    # version 0, tokens 2-5 by version 5.
    for s in samples:
        assert s.versions.tolist() == [0, 0, 5, 5, 5, 5]
        assert len(s.tokens) == 6 and s.finish_reason == "length"


@torch.no_grad()
def test_reprefill_samples_exactly_from_the_new_weights(model_dir):
    backend, new_model = backend_with_update(model_dir, "reprefill")
    samples = backend.generate(PROMPT, 2, PARAMS)
    for s in samples:
        ids = torch.tensor(np.concatenate([PROMPT, s.tokens]).astype(np.int64))[None]
        logits = new_model(input_ids=ids).logits[:, len(PROMPT) - 1 : -1]
        lp = token_logprobs(logits, ids[:, len(PROMPT) :], temperature=0.8)[0]
        # Tokens after the switch: behaviour logprob == new weights over the whole prefix.
        np.testing.assert_allclose(s.logprobs[2:], lp[2:].numpy(), atol=1e-4)


def test_learner_treats_a_mixed_group_as_its_oldest_version(model_dir):
    backend, _ = backend_with_update(model_dir, "continue")
    samples = backend.generate(PROMPT, 2, PARAMS)
    group = RolloutGroup(
        lease_id="1" * 32,
        generator_id="g",
        tokens=np.concatenate([s.tokens for s in samples]),
        logprobs=np.concatenate([s.logprobs for s in samples]),
        versions=np.concatenate([s.versions for s in samples]),
        lengths=np.array([len(s.tokens) for s in samples], np.int32),
        finish_reasons=[s.finish_reason for s in samples],
        generate_seconds=0.1,
    )
    # Staleness is measured from the oldest token: version 0, not 5.
    assert group.version == 0
    limits = RolloutLimits(vocab_size=backend.vocab_size, max_new_tokens=6)
    validate_rollout(group, limits, group_size=2, learner_version=5)
    # A learner still at version 4 cannot have published version 5: the group is invalid.
    with pytest.raises(ProtocolError):
        validate_rollout(group, limits, group_size=2, learner_version=4)


@torch.no_grad()
def test_learner_logprobs_equal_behaviour_logprobs_at_version_0(model_dir):
    backend = HFBackend(model_dir, seed=3, eos_token_id=10**6)
    blob, digest = publish(backend.model)
    backend.load_weights(blob, digest, 0)
    from transformers import AutoModelForCausalLM

    learner_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for temperature in (1.0, 0.7):
        params = SamplingParams(temperature=temperature, max_new_tokens=8)
        for s in backend.generate(PROMPT, 4, params):
            ids = torch.tensor(np.concatenate([PROMPT, s.tokens]).astype(np.int64))[None]
            logits = learner_model(input_ids=ids).logits[:, len(PROMPT) - 1 : -1]
            lp = token_logprobs(logits, ids[:, len(PROMPT) :], temperature=temperature)[0]
            np.testing.assert_allclose(s.logprobs, lp.numpy(), atol=1e-4)
