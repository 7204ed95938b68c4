"""`asyncrl bench --only learner`: the learner's training throughput and model FLOPs utilisation.

The real update (`learner.step.train_step`: DeepSpeed engine, chunked log-probs, the
configured objective) runs on random-init Qwen2 models of a few sizes, on the best device
here: bf16 with ZeRO-2 on CUDA, fp32 with ZeRO-0 on CPU. MFU is reported twice: against a
dense matrix product measured in the same run (a ratio taken side by side, as every bench
figure is) and, on GPUs whose datasheet peak is known, against that peak.

Model FLOPs per trained token follow the PaLM appendix convention: 6 x (parameters that take
part in a matrix product, the LM head included, the embedding lookup not) for forward and
backward, plus 12 x layers x hidden x sequence length for attention scores and values
(causal masking not discounted). The π_prox forward of multi-step updates and gradient
checkpointing are not counted, so MFU is the useful fraction.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSize:
    """One benchmarked shape (Qwen2 layout, untied LM head except for `tiny`)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    tied: bool = False


# "tiny" is the embedded default's model; the others widen it towards small real models
# (~0.13B, ~0.5B and ~1.3B) so the figure on a GPU says something about compute efficiency.
SIZES = {
    "tiny": ModelSize(128, 2, 4, 512, 19, tied=True),
    "s": ModelSize(768, 12, 12, 2048, 32000),
    "m": ModelSize(1024, 24, 16, 4096, 32000),
    "l": ModelSize(2048, 24, 16, 5504, 32000),
}

# Dense bf16 tensor-core peak, no sparsity, from the vendors' datasheets (SXM parts).
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}


def matmul_params(size: ModelSize) -> int:
    """Parameters that are multiplied per token: attention q/k/v/o and the three MLP matrices
    of every layer, and the LM head. Qwen2 has biases on q/k/v (3 x hidden per layer); they
    are added, not multiplied, and left out like norms and the embedding lookup."""
    h, f = size.hidden, size.intermediate
    per_layer = 4 * h * h + 3 * h * f
    return size.layers * per_layer + h * size.vocab


def flops_per_token(size: ModelSize, seq_len: int) -> float:
    """Training FLOPs of one token in a sequence of `seq_len` (forward + backward)."""
    return 6.0 * matmul_params(size) + 12.0 * size.layers * size.hidden * seq_len


def qwen2_config(size: ModelSize):
    """The transformers config of a bench model (Qwen2 layout, full multi-head attention)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        intermediate_size=size.intermediate,
        max_position_embeddings=4096,
        tie_word_embeddings=size.tied,
    )


def _model_dir(size: ModelSize, dtype, root: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config(size), dtype=dtype)
    model.save_pretrained(root)
    return root


def measure_matmul_tflops(device: str, quick: bool) -> float:
    """Best of a few dense products: bf16 8192^3 on CUDA, fp32 1024^3 on CPU."""
    import torch

    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3 if quick else 10):
        _sync(device)
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / 5)
    return 2 * n**3 / best / 1e12


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench_size(name: str, device: str, quick: bool, seq_len: int, sequences: int) -> dict:
    """Train steps on one size: tokens/s over the timed steps after a warm-up step."""
    import torch

    from asyncrl.launch.config import load_config
    from asyncrl.learner.engine import Batch, Engine
    from asyncrl.learner.step import train_step

    size = SIZES[name]
    dtype = "bfloat16" if device == "cuda" else "float32"
    micro = 8 if device == "cuda" else 4
    cfg = load_config(
        "tiny-cpu",
        [
            f"model.dtype={dtype}",
            f"model.device={device}",
            f"train.zero_stage={2 if device == 'cuda' else 0}",
            f"train.micro_batch_size={micro}",
            f"train.groups_per_step={sequences // 8}",
            "sampling.group_size=8",
        ],
    )
    gen = torch.Generator().manual_seed(0)
    prompt = seq_len // 8
    ids = torch.randint(0, size.vocab, (sequences, seq_len), generator=gen)
    resp = torch.zeros(sequences, seq_len)
    resp[:, prompt:] = 1
    mu = -torch.rand(sequences, seq_len, generator=gen) * resp
    adv = torch.randn(sequences, generator=gen)
    batch = Batch(ids, torch.ones_like(ids), resp, mu, adv)
    with tempfile.TemporaryDirectory(prefix="asyncrl-bench-learner-") as root:
        path = _model_dir(size, getattr(torch, dtype), root)
        engine = Engine(path, cfg.train, dtype, device, 0, 1, sequences)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # Warm-up: allocations, kernel selection.
        train_step(engine, batch, cfg.train, cfg.objective, cfg.sampling.temperature)
        _sync(device)
        times = []
        for _ in range(2 if quick else 5):
            t = time.perf_counter()
            train_step(engine, batch, cfg.train, cfg.objective, cfg.sampling.temperature)
            _sync(device)
            times.append(time.perf_counter() - t)
        peak_gb = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
        params = sum(p.numel() for p in engine.model.parameters())
        del engine
    step = statistics.median(times)
    tokens = sequences * seq_len
    out = {
        "params_m": round(params / 1e6, 1),
        "tokens_per_second": round(tokens / step, 1),
        "model_tflops": round(flops_per_token(size, seq_len) * tokens / step / 1e12, 2),
        "step_seconds": round(step, 3),
    }
    if peak_gb is not None:
        out["peak_memory_gb"] = round(peak_gb, 2)
    return out


def bench_packing(device: str, quick: bool, seq_len: int, sequences: int) -> dict:
    """Padded (token-balanced micro-batches, each trimmed to its longest row) against packed
    rows (`learner.packing`) on the tiny model (CPU) or the `s` size (CUDA), sequences of
    uniformly random length in [seq_len / 4, seq_len]: the share of computed positions that
    are padding, and real tokens/s, trials alternating so load hits both alike."""
    import torch

    from asyncrl.launch.config import load_config
    from asyncrl.learner.engine import Batch, Engine
    from asyncrl.learner.step import train_step

    name = "s" if device == "cuda" else "tiny"
    size = SIZES[name]
    dtype = "bfloat16" if device == "cuda" else "float32"
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(seq_len // 4, seq_len + 1, (sequences,), generator=gen)
    col = torch.arange(seq_len)[None, :]
    att = (col < lengths[:, None]).long()
    ids = torch.randint(0, size.vocab, (sequences, seq_len), generator=gen) * att
    resp = ((col >= seq_len // 8) & (att > 0)).float()
    mu = -torch.rand(sequences, seq_len, generator=gen) * resp
    batch = Batch(ids, att, resp, mu, torch.randn(sequences, generator=gen))
    tokens = int(att.sum())
    engines, times, shares = {}, {True: [], False: []}, {}
    with tempfile.TemporaryDirectory(prefix="asyncrl-bench-packing-") as root:
        path = _model_dir(size, getattr(torch, dtype), root)
        for packed in (False, True):
            cfg = load_config(
                "tiny-cpu",
                [
                    f"model.dtype={dtype}",
                    f"model.device={device}",
                    f"train.zero_stage={2 if device == 'cuda' else 0}",
                    f"train.micro_batch_size={8 if device == 'cuda' else 16}",
                    f"train.groups_per_step={sequences // 8}",
                    "sampling.group_size=8",
                    f"train.pack_sequences={'true' if packed else 'false'}",
                ],
            )
            engines[packed] = (Engine(path, cfg.train, dtype, device, 0, 1, sequences), cfg)
            e, c = engines[packed]
            m = train_step(e, batch, c.train, c.objective, c.sampling.temperature)  # warm-up
            shares[packed] = m["padding_share"]
        for _ in range(3 if quick else 8):
            for packed in (False, True):
                e, c = engines[packed]
                _sync(device)
                t = time.perf_counter()
                train_step(e, batch, c.train, c.objective, c.sampling.temperature)
                _sync(device)
                times[packed].append(time.perf_counter() - t)
        engines.clear()
    padded, packed = statistics.median(times[False]), statistics.median(times[True])
    return {
        "learner_packing_model": name,
        "learner_padding_share": round(shares[False], 4),
        "learner_padding_share_packed": round(shares[True], 4),
        "learner_tokens_per_second": round(tokens / padded, 1),
        "learner_tokens_per_second_packed": round(tokens / packed, 1),
        "learner_packing_speedup": round(padded / packed, 3),
    }


def bench_learner(quick: bool, sizes: list[str] | None = None) -> dict:
    """Every size that fits the device (CPU: tiny only), with MFU against the measured peak."""
    import gc

    import torch

    from asyncrl.launch.assets import resolve_device
    from asyncrl.learner.engine import init_distributed

    device = resolve_device("auto")
    init_distributed(device)
    if sizes is None:
        sizes = list(SIZES) if device == "cuda" and not quick else ["tiny"]
    seq_len, sequences = (1024, 64) if device == "cuda" else (64, 32)
    peak = measure_matmul_tflops(device, quick)
    out: dict = {"learner_device": device, "learner_matmul_peak_tflops": round(peak, 1)}
    datasheet = None
    if device == "cuda":
        gpu = torch.cuda.get_device_name()
        out["learner_gpu"] = gpu
        datasheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in gpu), None)
    for name in sizes:
        r = bench_size(name, device, quick, seq_len, sequences)
        logger.info("learner %s: %s", name, r)
        r["mfu_vs_matmul"] = round(r["model_tflops"] / peak, 3)
        if datasheet:
            r["mfu_vs_datasheet"] = round(r["model_tflops"] / datasheet, 3)
        out.update({f"learner_{name}_{k}": v for k, v in r.items()})
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    out.update(bench_packing(device, quick, seq_len, sequences))
    return out
