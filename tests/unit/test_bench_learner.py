"""The learner bench's FLOPs accounting (launch/bench_learner.py)."""

from __future__ import annotations

from asyncrl.launch.bench_learner import SIZES, flops_per_token, matmul_params, qwen2_config


def test_tiny_flops_by_hand():
    # tiny: hidden 128, 2 layers, MLP 512, vocab 19.
    # per layer: q,k,v,o 4 * 128 * 128 = 65,536; gate, up, down 3 * 128 * 512 = 196,608
    #   -> 262,144; two layers 524,288; LM head 128 * 19 = 2,432 -> 526,720 multiplied params.
    assert matmul_params(SIZES["tiny"]) == 526_720
    # 6 * 526,720 = 3,160,320 plus attention 12 * 2 * 128 * 64 = 196,608 at sequence length 64.
    assert flops_per_token(SIZES["tiny"], 64) == 3_356_928


def test_matmul_params_are_the_model_minus_what_is_not_multiplied():
    from transformers import AutoModelForCausalLM

    size = SIZES["tiny"]
    assert size.tied
    model = AutoModelForCausalLM.from_config(qwen2_config(size))
    # Tied: the embedding matrix is the LM head, multiplied once per token. Not multiplied:
    # q/k/v biases and the RMSNorm gains.
    skipped = sum(p.numel() for n, p in model.named_parameters() if "bias" in n or "norm" in n)
    total = sum(p.numel() for p in model.parameters())
    assert matmul_params(size) == total - skipped
