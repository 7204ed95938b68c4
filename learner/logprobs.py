"""Per-token logprobs and entropy from logits, chunked so the vocabulary-wide softmax of a
whole batch never exists at once.

A naive `log_softmax(logits)` materialises a second `[N, T, V]` tensor (and keeps it for
backward); here each chunk of rows computes `logit[token] - logsumexp(logits)` and only the
`[chunk, V]` temporaries live at a time. The learner scores tokens with the generator's
sampling temperature so that `π_θ` and the behaviour logprob `μ` describe the same
distribution (DESIGN.md, "Logprob semantics").
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 4096  # rows (tokens) per chunk: 4096 x 152k vocab x 4 B = 2.5 GB fp32 at worst


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK,
) -> torch.Tensor:
    """log softmax(logits / temperature)[token] for every position.

    logits: [..., V] (any float dtype; computed in fp32); tokens: [...] int64, same leading
    shape. Returns fp32 [...], differentiable w.r.t. logits. Forward and backward both work
    on `chunk_size` rows at a time: the only full-size tensor besides the logits is their
    gradient, written chunk by chunk (autograd's own slicing would add a second one).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shape = tokens.shape
    flat = logits.reshape(-1, logits.shape[-1])
    if flat.shape[0] == 0:
        return logits.new_zeros(shape, dtype=torch.float32)
    step = flat.shape[0] if not chunk_size else max(int(chunk_size), 1)
    out = _ChunkedLogprob.apply(flat, tokens.reshape(-1), float(temperature), step)
    return out.reshape(shape)


class _ChunkedLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, idx, temperature, step):
        out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        for a in range(0, flat.shape[0], step):
            z = flat[a : a + step].float() / temperature
            out[a : a + step] = z.gather(-1, idx[a : a + step, None]).squeeze(-1) - z.logsumexp(-1)
        ctx.save_for_backward(flat, idx)
        ctx.temperature, ctx.step = temperature, step
        return out

    @staticmethod
    def backward(ctx, grad_out):
        flat, idx = ctx.saved_tensors
        t, step = ctx.temperature, ctx.step
        grad = torch.empty_like(flat)
        # d/dz_v of (z_y - logsumexp z) = 1[v = y] - softmax(z)_v, and z = logits / T.
        for a in range(0, flat.shape[0], step):
            p = torch.softmax(flat[a : a + step].float() / t, dim=-1)
            p.scatter_add_(-1, idx[a : a + step, None], -torch.ones_like(p[:, :1]))
            grad[a : a + step] = (p * (-grad_out[a : a + step, None] / t)).to(grad.dtype)
        return grad, None, None, None


def token_entropy(
    logits: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at every position: [..., V] -> fp32 [...].

    Uses H = logsumexp(z) - Σ softmax(z)·z, which needs no log of small probabilities.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    step = flat.shape[0] if not chunk_size else chunk_size
    out = []
    for start in range(0, flat.shape[0], max(step, 1)):
        z = flat[start : start + step].float()
        if temperature != 1.0:
            z = z / temperature
        out.append(torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1))
    if not out:
        return logits.new_zeros(shape, dtype=torch.float32)
    return torch.cat(out).reshape(shape)
