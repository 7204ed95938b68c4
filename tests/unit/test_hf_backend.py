"""The hf backend's stop strings (EOS and in-flight updates are in test_inflight.py)."""

from __future__ import annotations

import numpy as np

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
