"""Held-out evaluation with the training reward.

Each held-out row's prompt (the chat template applied to `messages` rows, as for training)
gets `eval.samples` completions (one greedy completion when 1), scored by the configured
reward functions, the same extractors and verifiers as training. Reported: mean reward,
accuracy (the fraction of completions that reach `eval.success_threshold`) over the rows that
carry a label in `reward.answer_field`, maj@k there (k > 1: the majority answer is the label, as
TTRL votes), and pass@k with k = samples (the unbiased estimator of
Chen et al. 2021, which with n = k samples is "any of them solved"). A model whose samples
often solve a row that its typical sample fails is one RL can sharpen. All functions work on
whatever device and dtype the model is on.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from asyncrl.learner.data import prompt_text
from asyncrl.learner.rewards import RewardConfig, RewardFunction, RewardInput, RewardResult
from asyncrl.learner.rewards.pool import Failed, RewardJob, RewardPool

logger = logging.getLogger(__name__)

# (model, tokenizer, prompt token ids per row, samples, greedy, episode budget) -> (per row,
# (final answer text, its ids) per sample; statistics such as eval_tool_call_success).
EpisodeEval = Callable[..., tuple[list[list[tuple[str, list[int]]]], dict[str, float]]]


@dataclass(frozen=True)
class EnvHooks:
    """Multi-turn rollouts as the learner sees them, built by the launch layer from the
    generators' environment: the tool schemas chat prompts are rendered with (`tools=`), and
    held-out evaluation that plays whole episodes (the learner never imports environments)."""

    tools: list[dict] | None = None
    episodes: EpisodeEval | None = None


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


def _decode_new(tokenizer, new_tokens: torch.Tensor) -> list[tuple[str, list[int]]]:
    """(text, ids) per row: the generated ids up to (not including) the first EOS.

    The text is decoded as intake decodes a rollout, so rewards see the same strings."""
    eos = tokenizer.eos_token_id
    out = []
    for row in new_tokens.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        out.append((tokenizer.decode(row, skip_special_tokens=True), row))
    return out


def generate_samples(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 8,
    batch_size: int = 64,
) -> list[list[tuple[str, list[int]]]]:
    """`num_samples` (text, token ids) completions per prompt; temperature 0 = greedy (then
    one sample).

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
    results: list[list[tuple[str, list[int]]]] = []
    with _eval_mode(model, tokenizer):
        device = _device(model)
        # Keep the number of generated sequences per call near batch_size.
        step = max(1, batch_size // n)
        for start in range(0, len(prompts), step):
            chunk = list(prompts[start : start + step])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            out = model.generate(**enc, **gen_kwargs)
            done = _decode_new(tokenizer, out[:, enc["input_ids"].shape[1] :])
            results.extend(done[i * n : (i + 1) * n] for i in range(len(chunk)))
    return results


def generate_completions(model, tokenizer, prompts: Sequence[str], **kw) -> list[list[str]]:
    """Completion texts only (stripped), `generate_samples`' arguments."""
    samples = generate_samples(model, tokenizer, prompts, **kw)
    return [[t.strip() for t, _ in row] for row in samples]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c solved: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


class PoolScorer:
    """Scores evaluation groups in a reward pool of its own: the same functions as training,
    under the same hard per-group deadline (`reward.timeout_seconds`), so a hanging plug-in
    costs a held-out row, never the learner's training thread. Its own workers, not the hub's,
    because intake assumes it alone fills the hub's queue."""

    def __init__(self, cfg: RewardConfig):
        self.pool = RewardPool(cfg)
        self.pool.start()

    def score_all(self, inputs: list[RewardInput]) -> list[RewardResult | str]:
        """A result per input, or why scoring it failed."""
        results: queue.Queue = queue.Queue()
        for i, inp in enumerate(inputs):

            def make(inp: RewardInput = inp) -> RewardJob:
                return RewardJob(inp)

            def done(outcome, i: int = i) -> None:
                results.put((i, outcome))

            while not self.pool.submit(make, done):
                time.sleep(0.01)  # the queue is full: wait for a worker
        out: list[RewardResult | str] = [""] * len(inputs)
        for _ in inputs:
            i, res = results.get()
            if isinstance(res, Failed):
                out[i] = f"{res.cause}: {res.detail}"
            else:
                out[i] = RewardResult(list(res.rewards), dict(res.metrics))
        return out

    def close(self) -> None:
        self.pool.close()


_SCORERS: dict[str, PoolScorer] = {}


def eval_reward(cfg: RewardConfig) -> PoolScorer:
    """The scorer evaluation uses for this configuration, started once per process (workers
    and a reward model are not rebuilt at every evaluation; the pool stops at exit)."""
    key = cfg.model_dump_json()
    if key not in _SCORERS:
        _SCORERS[key] = PoolScorer(cfg)
    return _SCORERS[key]


def _score_all(reward, inputs: list[RewardInput]) -> list[RewardResult | str]:
    if isinstance(reward, PoolScorer):
        return reward.score_all(inputs)
    out: list[RewardResult | str] = []
    for inp in inputs:  # a reward function called in this process (tests, tools)
        try:
            out.append(reward(inp))
        except Exception as exc:  # counted as a failed row, as the pool's failures are
            out.append(repr(exc))
    return out


def score_rows(
    reward: RewardFunction | PoolScorer,
    rows: Sequence[dict],
    prompts: Sequence[str],
    samples: Sequence[Sequence[tuple[str, list[int]]]],
    *,
    prompt_field: str,
    answer_field: str,
    success_threshold: float,
) -> dict[str, float]:
    """Scores each row's completions as one group (as intake does), and the metrics above.

    A row whose reward fails (raises, times out, or scores nothing) is left out and counted
    in `eval_reward_errors`: a reward bug must not end the run at an evaluation."""
    inputs = [
        RewardInput(
            prompt=row.get(prompt_field, prompt),
            prompt_text=prompt,
            completions=[t for t, _ in group],
            completion_ids=[list(ids) for _, ids in group],
            row=row,
        )
        for row, prompt, group in zip(rows, prompts, samples)
    ]
    rewards_sum, n_samples, errors = 0.0, 0, 0
    solved_labelled, n_labelled, pass_sum, n_rows = 0, 0, 0.0, 0
    maj_right, maj_rows = 0, 0
    for row, inp, res in zip(rows, inputs, _score_all(reward, inputs)):
        if isinstance(res, str):
            errors += 1
            logger.warning("evaluation: reward failed on a held-out row: %s", res)
            continue
        values = [float(r or 0.0) for r in res.rewards]
        solved = sum(v >= success_threshold for v in values)
        rewards_sum += sum(values)
        n_samples += len(values)
        pass_sum += pass_at_k(len(values), solved, len(values))
        n_rows += 1
        if row.get(answer_field) is not None:
            solved_labelled += solved
            n_labelled += len(values)
            if len(values) > 1:
                maj_right += majority_correct(inp.completions, row[answer_field])
                maj_rows += 1
    out = {"eval_reward_errors": float(errors), "eval_rows": float(n_rows)}
    if n_rows:
        out["eval_reward_mean"] = rewards_sum / n_samples
        out["eval_pass_at_k"] = pass_sum / n_rows
    if n_labelled:
        out["eval_accuracy"] = solved_labelled / n_labelled
    if maj_rows:
        out["eval_maj_at_k"] = maj_right / maj_rows
    return out


def majority_correct(completions: Sequence[str], label) -> bool:
    """maj@k: whether the majority answer of a row's k completions (TTRL's vote, its answer
    extraction and cheap equivalence) is the label."""
    from asyncrl.learner.rewards.math import extract_answer, gold_answer
    from asyncrl.learner.rewards.ttrl import agrees, majority

    return agrees(majority([extract_answer(c) for c in completions]), gold_answer(label))


def evaluate_rows(
    model,
    tokenizer,
    rows: Sequence[dict],
    reward: RewardFunction | PoolScorer | None,
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    samples: int = 1,
    temperature: float = 1.0,
    success_threshold: float = 1.0,
    max_new_tokens: int = 8,
    batch_size: int = 64,
    env: EnvHooks | None = None,
) -> dict[str, float]:
    """Generates for every row and, with a `reward` (rank 0), scores them (`score_rows`).
    Without one (other ZeRO-3 ranks, which must run the same forwards) it only generates.
    With `env.episodes` each completion is a multi-turn episode's final answer (rank 0 only:
    not under ZeRO-3 sharding)."""
    if not rows:
        return {}
    env = env or EnvHooks()
    prompts = [prompt_text(r, prompt_field, tokenizer, env.tools) for r in rows]
    extra: dict[str, float] = {}
    if env.episodes is not None:
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        with _eval_mode(model, tokenizer):
            gens, extra = env.episodes(model, tokenizer, ids, samples, samples == 1, max_new_tokens)
    else:
        gens = generate_samples(
            model,
            tokenizer,
            prompts,
            num_samples=samples,
            temperature=0.0 if samples == 1 else temperature,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    if reward is None:
        return {}
    return extra | score_rows(
        reward,
        rows,
        prompts,
        gens,
        prompt_field=prompt_field,
        answer_field=answer_field,
        success_threshold=success_threshold,
    )
