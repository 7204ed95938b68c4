"""Against a real SGLang server (GPU machines with `asyncrl[sglang]`): generate with
logprobs, then load new weights through /update_weights_from_disk."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = [pytest.mark.sglang, pytest.mark.gpu]


def test_generate_and_update_weights(tmp_path):
    pytest.importorskip("sglang")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from generators.backends.base import SamplingParams
    from generators.backends.sglang import SGLangBackend, SGLangConfig
    from learner.weights import digest_of, serialize_named_tensors

    model = os.environ.get("ASYNCRL_SGLANG_MODEL")
    if not model:
        from launch.config import load_config
        from launch.tiny import setup_tiny_assets

        model = setup_tiny_assets(load_config("tiny-cpu").tiny).model_path
    backend = SGLangBackend(model, SGLangConfig(weights_dir=str(tmp_path / "w"), port=30123))
    try:
        samples = backend.generate(np.array([1, 2, 3], np.int32), 4, SamplingParams(1.0, 1, 0, 8))
        assert len(samples) == 4
        assert all((s.logprobs <= 1e-3).all() and len(s.tokens) >= 1 for s in samples)
        from transformers import AutoModelForCausalLM

        params = dict(AutoModelForCausalLM.from_pretrained(model).named_parameters())
        blob = serialize_named_tensors(params)
        backend.load_weights(blob, digest_of(blob), 1)
        after = backend.generate(np.array([1, 2, 3], np.int32), 2, SamplingParams(1.0, 1, 0, 8))
        assert all((s.versions == 1).all() for s in after)
    finally:
        backend.close()
