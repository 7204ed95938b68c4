"""Held-out evaluation of a causal LM on rows with exact answers.

The learner reports greedy accuracy on the held-out split before, during and after RL; the
sampled metrics (pass@k, majority@k) are what tells whether a warm start leaves room for RL:
a model whose samples often contain the right answer but whose greedy answer is often wrong
is one RL can sharpen. All functions work on whatever device and dtype the model is on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager

import torch


@contextmanager
def _eval_mode(model, tokenizer):
    # Left padding keeps every prompt's last token at the same position, so the new tokens of
    # a batch start at one column; restore the caller's settings afterwards.
    was_training = model.training
    side = tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            yield
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _zero3_sharded(model) -> bool:
    """True when DeepSpeed ZeRO-3 partitions the parameters across several ranks.

    Every rank must then run the same number of forwards (each one gathers parameters
    collectively), so generation has to keep stepping until all ranks are done.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2:
        return False
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _decode_new(tokenizer, new_tokens: torch.Tensor) -> list[str]:
    """Completion texts: the generated ids up to (not including) the first EOS."""
    eos = tokenizer.eos_token_id
    out = []
    for row in new_tokens.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 8,
    batch_size: int = 64,
) -> list[list[str]]:
    """`num_samples` completions per prompt; temperature 0 = greedy (then one sample).

    Sampling is plain temperature sampling (no top-k/top-p), as in RL training. Seed torch's
    RNG beforehand for reproducible samples.
    """
    greedy = temperature <= 0.0
    n = 1 if greedy else num_samples
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        num_return_sequences=n,
        synced_gpus=_zero3_sharded(model),
    )
    if greedy:
        gen_kwargs.update(do_sample=False)
    else:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    results: list[list[str]] = []
    with _eval_mode(model, tokenizer):
        device = _device(model)
        # Keep the number of generated sequences per call near batch_size.
        step = max(1, batch_size // n)
        for start in range(0, len(prompts), step):
            chunk = list(prompts[start : start + step])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            out = model.generate(**enc, **gen_kwargs)
            texts = _decode_new(tokenizer, out[:, enc["input_ids"].shape[1] :])
            results.extend(texts[i * n : (i + 1) * n] for i in range(len(chunk)))
    return results


def _answers(rows, answer_field) -> list[str]:
    return [str(r[answer_field]).strip() for r in rows]


def greedy_accuracy(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    max_new_tokens: int = 8,
    batch_size: int = 64,
) -> float:
    """Fraction of rows whose greedy completion (up to EOS, stripped) equals the answer."""
    if not rows:
        return 0.0
    comps = generate_completions(
        model,
        tokenizer,
        [r[prompt_field] for r in rows],
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    gold = _answers(rows, answer_field)
    return sum(c[0] == g for c, g in zip(comps, gold)) / len(rows)


def sampled_metrics(
    model,
    tokenizer,
    rows: Sequence[dict],
    k: int,
    temperature: float = 1.0,
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    max_new_tokens: int = 8,
    batch_size: int = 64,
) -> dict[str, float]:
    """From k samples per row: pass@k, majority@k (the most frequent completion, ties broken
    by first occurrence, is right) and mean per-sample accuracy."""
    if not rows:
        return {"pass_at_k": 0.0, "maj_at_k": 0.0, "sample_accuracy": 0.0}
    comps = generate_completions(
        model,
        tokenizer,
        [r[prompt_field] for r in rows],
        num_samples=k,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    gold = _answers(rows, answer_field)
    n = len(rows)
    passed = sum(g in c for c, g in zip(comps, gold))
    maj = sum(Counter(c).most_common(1)[0][0] == g for c, g in zip(comps, gold))
    per_sample = sum(c.count(g) / len(c) for c, g in zip(comps, gold))
    return {"pass_at_k": passed / n, "maj_at_k": maj / n, "sample_accuracy": per_sample / n}


def sampled_pass_at_k(
    model,
    tokenizer,
    rows: Sequence[dict],
    k: int,
    temperature: float = 1.0,
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    max_new_tokens: int = 8,
    batch_size: int = 64,
) -> float:
    """Fraction of rows where at least one of k samples at `temperature` is exactly right."""
    return sampled_metrics(
        model,
        tokenizer,
        rows,
        k,
        temperature,
        prompt_field=prompt_field,
        answer_field=answer_field,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )["pass_at_k"]
