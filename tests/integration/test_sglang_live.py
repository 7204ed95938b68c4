"""Against a real SGLang server (GPU machines with `asyncrl[sglang]`): generate with
logprobs, load new weights through /update_weights_from_disk, and receive them from the
learner's publisher through a weight-update group (/update_weights_from_distributed).

`ASYNCRL_SGLANG_MODEL` picks the model (default: the embedded tiny one);
`ASYNCRL_SGLANG_ARGS` adds launch_server arguments (e.g. `--attention-backend triton`)."""

from __future__ import annotations

import os
import shlex

import numpy as np
import pytest

pytestmark = [pytest.mark.sglang, pytest.mark.gpu]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("sglang")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from asyncrl.generators.backends.sglang import SGLangBackend, SGLangConfig

    model = os.environ.get("ASYNCRL_SGLANG_MODEL")
    if not model:
        from asyncrl.launch.config import load_config
        from asyncrl.launch.tiny import setup_tiny_assets

        model = setup_tiny_assets(load_config("tiny-cpu").tiny).model_path
    cfg = SGLangConfig(
        weights_dir=str(tmp_path_factory.mktemp("w")),
        port=30123,
        extra_args=shlex.split(os.environ.get("ASYNCRL_SGLANG_ARGS", "")),
    )
    backend = SGLangBackend(model, cfg)
    yield backend
    backend.close()


def _params(model_path: str, scale: float):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path)
    return {n: (p.detach() * scale).to(torch.float32) for n, p in model.named_parameters()}


def _reference_logprobs(model_path: str, tensors, prompt: np.ndarray, tokens: np.ndarray):
    """log p(token) under `tensors`, computed by transformers (temperature 1)."""
    import torch
    from transformers import AutoModelForCausalLM

    from asyncrl.generators.weights import load_into_model

    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    load_into_model(model, tensors)
    ids = torch.tensor(np.concatenate([prompt, tokens]).astype(np.int64))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    pos = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
    return logp[pos, ids[0, pos + 1]].numpy()


def test_generate_and_update_weights(server):
    from asyncrl.learner.weights import serialize_named_tensors
    from asyncrl.protocol.blob import digest_of
    from asyncrl.protocol.settings import SamplingParams

    backend = server
    samples = backend.generate(
        np.array([1, 2, 3], np.int32),
        4,
        SamplingParams(temperature=1.0, top_p=1, top_k=0, max_new_tokens=8),
    )
    assert len(samples) == 4
    assert all((s.logprobs <= 1e-3).all() and len(s.tokens) >= 1 for s in samples)
    blob = serialize_named_tensors(_params(backend.model_path, 1.0))
    backend.load_weights(blob, digest_of(blob), 1)
    after = backend.generate(
        np.array([1, 2, 3], np.int32),
        2,
        SamplingParams(temperature=1.0, top_p=1, top_k=0, max_new_tokens=8),
    )
    assert all((s.versions == 1).all() for s in after)


def test_weights_broadcast_into_the_server(server):
    """The nccl transport's publisher and the backend against SGLang's weight updater. One
    GPU holds both ends here and NCCL refuses two ranks on one device, so the group runs
    gloo (SGLang receives into CUDA tensors either way); the bucket layout, group
    rendezvous and version labels are what this checks."""
    from asyncrl.generators.backends.base import SamplingParams
    from asyncrl.launch.config import load_config
    from asyncrl.learner.metrics import LearnerMetrics
    from asyncrl.learner.publishers.nccl import NcclServer
    from asyncrl.learner.weights import WeightsStore, serialize_named_tensors
    from asyncrl.protocol.messages import NcclJoin, NcclPull

    backend = server
    cfg = load_config(
        "tiny-cpu",
        [
            "learner.weights.type=nccl",
            "learner.weights.backend=gloo",
            "learner.weights.bucket_bytes=1048576",
        ],
    )
    store = WeightsStore(cfg.learner.weight_chunk_bytes)
    metrics = LearnerMetrics()
    lc = cfg.learner
    publisher = NcclServer(lc.weights, lc.bind_host, store, metrics, "cuda")
    try:
        world = backend.nccl_world_size()
        group = publisher.join(NcclJoin("live", world))
        backend.join_update_group(group.address, group.port, group.group_name, group.backend, world)
        prompt = np.array([1, 2, 3], np.int32)
        for version, scale in ((5, 0.5), (6, 2.0)):
            tensors = _params(backend.model_path, scale)
            store.put(version, serialize_named_tensors(tensors))
            plan = publisher.pull(NcclPull("live", version, group.group_name))
            assert not plan.missing and len(plan.names) >= 1
            backend.update_from_buckets(plan, version, group.group_name)
            out = backend.generate(
                prompt, 4, SamplingParams(temperature=1.0, top_p=1, top_k=0, max_new_tokens=8)
            )
            assert all((s.versions == version).all() for s in out)
            # The server samples from what was broadcast: its logprobs are the reference
            # model's under these weights, and not under the other version's. Serving is
            # bf16, so single tokens may differ by ~0.25 (seen); the typical token much less.
            for s in out:
                ref = _reference_logprobs(backend.model_path, tensors, prompt, s.tokens)
                err = np.abs(s.logprobs - ref)
                assert np.median(err) < 0.05 and err.max() < 0.5, (s.logprobs, ref)
                other = _params(backend.model_path, 2.5 - scale)
                off = _reference_logprobs(backend.model_path, other, prompt, s.tokens)
                assert np.abs(off - ref).max() > 0.2, "versions too alike to tell apart"
        assert metrics.weight_broadcast_failures._value.get() == 0
    finally:
        publisher.close()


def test_multi_turn_token_in_token_out(server):
    """Two turns of an episode through /generate with `input_ids`: the second continues the
    exact ids of the first plus environment tokens, and its behaviour logprobs are the
    model's over that whole sequence (nothing re-tokenised); contexts of different lengths
    share one request."""
    from asyncrl.learner.weights import serialize_named_tensors
    from asyncrl.protocol.blob import digest_of
    from asyncrl.protocol.settings import SamplingParams

    backend = server
    tensors = _params(backend.model_path, 1.0)
    blob = serialize_named_tensors(tensors)
    backend.load_weights(blob, digest_of(blob), 50)
    prompt = np.array([1, 2, 3], np.int32)
    params = SamplingParams(temperature=1.0, top_p=1, top_k=0, max_new_tokens=6)
    (first,) = backend.continue_batch([prompt], params)
    context = np.concatenate([prompt, first.tokens, np.array([5, 6], np.int32)])
    second, other = backend.continue_batch([context, prompt], params)
    assert len(second.tokens) >= 1 and len(other.tokens) >= 1
    assert (second.versions == 50).all()
    reference = _reference_logprobs(backend.model_path, tensors, context, second.tokens)
    # The server may compute in half precision: logprobs agree to a few hundredths.
    np.testing.assert_allclose(second.logprobs, reference, atol=0.1)
