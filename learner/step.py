"""One training step, pure of sockets: groups packed into a batch with their advantages,
then the objective's optimizer steps over this rank's shard (mini-batches, micro-batches,
proximal and reference logprobs)."""

from __future__ import annotations

import numpy as np
import torch

from asyncrl.buffer.replay import BufferedGroup
from asyncrl.learner.advantages import compute_advantages
from asyncrl.learner.config import TrainConfig
from asyncrl.learner.dpo_step import dpo_train_step, pair_batch
from asyncrl.learner.engine import Batch, Engine, balance_rows, shard_rows
from asyncrl.learner.loss_config import AdvantageConfig, ObjectiveConfig
from asyncrl.learner.objectives import policy_loss
from asyncrl.learner.packing import padding_share, positions, prepare, reference_logprobs
from asyncrl.learner.packing import score_tokens as _score
from asyncrl.learner.value import positive_lm_loss, positive_tokens


def build_batch(
    groups: list[BufferedGroup],
    advantage: AdvantageConfig,
    pad_id: int,
    objective: ObjectiveConfig | None = None,
) -> tuple[Batch, dict]:
    """Pack groups into right-padded tensors; advantages from each group's rewards (dpo:
    the groups' preference pairs instead, `learner.dpo_step.pair_batch`). The response mask is
    1 on model tokens only: a multi-turn episode's environment tokens (mask 0 in its loss mask)
    are context, never trained on and never counted by token-mean."""
    datas = [g.payload for g in groups]
    adv, adv_metrics = _group_advantages(datas, advantage)
    rewards = torch.cat([torch.as_tensor(d.rewards, dtype=torch.float32) for d in datas])
    prompts, responses, behaviour, masks = [], [], [], []
    for d in datas:
        for j, (resp, lp) in enumerate(zip(d.responses, d.logprobs)):
            prompts.append(d.prompt.token_ids)
            responses.append(resp)
            behaviour.append(lp)
            masks.append(np.ones(len(resp), np.float32) if d.masks is None else d.masks[j])
    # Filled through boolean masks over the padded layout (row-major order matches the
    # concatenation order), one numpy pass per tensor instead of four tensor writes per row.
    starts = np.array([len(p) for p in prompts], dtype=np.int64)
    ends = starts + np.array([len(r) for r in responses], dtype=np.int64)
    n, length = len(prompts), int(ends.max())
    col = np.arange(length)[None, :]
    valid = col < ends[:, None]
    in_response = valid & (col >= starts[:, None])
    ids = np.full((n, length), pad_id, dtype=np.int64)
    ids[valid] = np.concatenate([x for pair in zip(prompts, responses) for x in pair])
    resp = np.zeros((n, length), dtype=np.float32)
    resp[in_response] = np.concatenate(masks)
    mu_np = np.zeros((n, length), dtype=np.float32)
    mu_np[in_response] = np.concatenate(behaviour)
    input_ids, attention = torch.from_numpy(ids), torch.from_numpy(valid.astype(np.int64))
    resp_mask, mu = torch.from_numpy(resp), torch.from_numpy(mu_np)
    response_tokens = int((ends - starts).sum())
    stats = {
        "reward_mean": float(rewards.mean()),
        "response_tokens": float(resp_mask.sum()),
        # Multi-turn episodes: the share of response tokens the environment wrote (masked).
        "env_token_fraction": 1.0 - float(resp_mask.sum()) / max(response_tokens, 1),
        **{f"adv_{k}": v for k, v in adv_metrics.items()},
    }
    for d in datas:
        for k, v in d.reward_metrics.items():
            stats[k] = stats.get(k, 0.0) + v / len(datas)
    batch = Batch(input_ids, attention, resp_mask, mu, adv, rewards)
    if objective is not None and objective.name == "dpo":
        per_group = [torch.as_tensor(d.rewards, dtype=torch.float32) for d in datas]
        batch, pair_stats = pair_batch(batch, per_group, objective)
        stats.update(pair_stats)
    return batch, stats


def _group_advantages(datas: list, advantage: AdvantageConfig) -> tuple[torch.Tensor, dict]:
    """Per-sample advantages, flat in group order. Groups of one size are estimated together;
    after a live change of sampling.group_size a batch can hold two sizes, each estimated
    apart (a batch-level statistic such as reinforce_pp's then covers its size's groups)."""
    sizes = sorted({len(d.rewards) for d in datas})
    parts: dict[int, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    for size in sizes:
        idx = [i for i, d in enumerate(datas) if len(d.rewards) == size]
        sub = [datas[i] for i in idx]
        rewards = torch.tensor(np.stack([d.rewards for d in sub]), dtype=torch.float32)
        baseline = None
        if all(d.baseline_reward is not None for d in sub):
            baseline = torch.tensor([d.baseline_reward for d in sub], dtype=torch.float32)
        lengths = torch.tensor([[len(x) for x in d.responses] for d in sub], dtype=torch.float32)
        adv, m = compute_advantages(rewards, advantage, baseline, lengths)
        parts.update({i: row for i, row in zip(idx, adv)})
        share = len(idx) / len(datas)
        for k, v in m.items():
            metrics[k] = (
                max(metrics.get(k, v), v) if k == "abs_max" else metrics.get(k, 0) + v * share
            )
    flat = torch.cat([parts[i] for i in range(len(datas))]) if datas else torch.zeros(0)
    return flat, metrics


def train_step(
    engine: Engine,
    batch: Batch,
    train: TrainConfig,
    objective: ObjectiveConfig,
    temperature: float,
    ref_model=None,
) -> dict[str, float]:
    """Optimizer steps over this rank's shard of `batch`: `train.ppo_epochs` passes over
    `train.mini_batches` mini-batches, each accumulated over the engine's micro-batches.
    `temperature`: the generators' sampling temperature, which scoring must use too.

    With more than one optimizer step per batch, π_prox is scored once before the first step
    (decoupled objectives need the policy the batch started from); with one step the objective
    uses π_θ detached, which is the same value without the extra forward pass.
    """
    if objective.name == "dpo":
        return dpo_train_step(engine, batch, train, objective, temperature, ref_model)
    minis = mini_batch_rows(len(batch), train.mini_batches)
    multi = train.ppo_epochs * len(minis) > 1
    prox = _proximal_logprobs(engine, batch, minis, train, temperature) if multi else {}
    use_ref = ref_model is not None and objective.kl_beta > 0
    entropy_grad = objective.entropy_coef > 0
    totals: dict[str, float] = {}
    weight_sum = 0.0
    computed = real = 0
    for _ in range(train.ppo_epochs):
        for mi, rows in enumerate(minis):
            mini = batch.rows(rows)
            # Normalizer: every valid token of this optimizer step across ranks (token-mean)
            # or every sequence (seq-mean modes); all ranks see the full batch, so it agrees.
            if objective.agg == "token-mean":
                normalizer = float(mini.response_mask[:, 1:].sum().clamp(min=1))
            else:
                normalizer = float(max(1, len(mini)))
            lm_coef = objective.positive_lm_coef if mini.rewards is not None else 0.0
            if lm_coef > 0:
                lm_tokens = positive_tokens(
                    mini.response_mask[:, 1:], mini.rewards, objective.positive_lm_threshold
                )
            for i, mb in enumerate(_micro_batches(engine, mini, train)):
                c, r = positions(mb)
                computed, real = computed + c, real + r
                lp, ent = _score(engine, mb, temperature, "grad" if entropy_grad else "detached")
                mask = mb.response_mask[:, 1:]
                ref_lp = reference_logprobs(ref_model, mb, temperature) if use_ref else None
                loss, m = policy_loss(
                    lp,
                    mb.behaviour_logprobs[:, 1:],
                    mb.advantages[:, 1:] if mb.advantages.dim() == 2 else mb.advantages,
                    mask,
                    objective,
                    prox_logprobs=prox.get((mi, i)),
                    ref_logprobs=ref_lp,
                    entropy=ent,
                    normalizer=normalizer,
                )
                if lm_coef > 0:
                    lm = positive_lm_loss(
                        lp, mask, mb.rewards, objective.positive_lm_threshold, lm_tokens
                    )
                    loss = loss + lm_coef * lm
                engine.backward_and_step(loss)
                w = float(mask.sum())
                weight_sum += w
                for k, v in m.items():
                    if k == "is_weight_max":
                        totals[k] = max(totals.get(k, 0.0), float(v))
                    elif k == "loss":
                        totals[k] = totals.get(k, 0.0) + float(v)
                    else:
                        totals[k] = totals.get(k, 0.0) + float(v) * w
    optimizer_steps = train.ppo_epochs * len(minis)
    out = {
        k: (
            v
            if k == "is_weight_max"
            else v / optimizer_steps
            if k == "loss"
            else v / max(weight_sum, 1.0)
        )
        for k, v in totals.items()
    }
    out["grad_norm"] = engine.grad_norm()
    out["padding_share"] = padding_share(computed, real)
    out["lr"] = engine.lr()
    return out


def _micro_batches(engine: Engine, mini: Batch, train: TrainConfig) -> list[Batch]:
    """This rank's micro-batches of a mini-batch, token-balanced (default) or contiguous
    row slices; each trimmed to its own longest row (or packed, `learner.packing`) and moved
    to the device."""
    if train.token_balanced:
        lengths = [int(x) for x in mini.attention_mask.sum(1)]
        parts = balance_rows(lengths, engine.rank, engine.world, engine.micro_batches)
        picked = [mini.rows(ix) if len(ix) else _empty_rows(mini) for ix in parts]
    else:
        slices = shard_rows(len(mini), engine.rank, engine.world, engine.micro_batches)
        picked = [mini.rows(sl) if sl.stop > sl.start else _empty_rows(mini) for sl in slices]
    return [prepare(mb, engine, train.pack_sequences, train.pack_row_tokens) for mb in picked]


def mini_batch_rows(n: int, mini_batches: int) -> list[slice]:
    """Contiguous row ranges of the mini-batches (one optimizer step each)."""
    size = -(-n // max(1, mini_batches))
    return [slice(i, min(n, i + size)) for i in range(0, n, max(size, 1))]


@torch.no_grad()
def _proximal_logprobs(
    engine: Engine, batch: Batch, minis, train: TrainConfig, temperature: float
) -> dict:
    """π_prox for every micro-batch this rank will train on, before any update."""
    out = {}
    for mi, rows in enumerate(minis):
        mini = batch.rows(rows)
        for i, mb in enumerate(_micro_batches(engine, mini, train)):
            out[(mi, i)] = _score(engine, mb, temperature, "none")[0]
    return out


def _empty_rows(batch: Batch) -> Batch:
    """One row with nothing to learn: keeps ranks' backward counts equal when a shard is
    shorter than the others."""
    mb = batch.rows(slice(0, 1))
    mb.response_mask = torch.zeros_like(mb.response_mask)
    return mb


def load_reference(model_path: str, dtype: str, device: str):
    """The frozen initial policy for the KL term and DPO: weights only, no optimizer state, no
    gradients, replicated on every rank. Load it before the `Engine`: while a ZeRO-3 engine
    lives, transformers builds models partitioned across ranks (refused here)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise RuntimeError(
            "load_reference after a ZeRO-3 engine: the reference would be partitioned; "
            "load it before creating the Engine"
        )

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    model.requires_grad_(False)
    return model.eval().to(device)
