"""The training step of `objective.name: dpo`: the step's groups become preference pairs
(`learner.dpo`), and every micro-batch holds whole pairs, so the pairwise loss never needs a
sample that another micro-batch or rank scored.

The batch keeps its type (it is broadcast to the other ranks like any other): rows in pair
layout (2k chosen, 2k+1 rejected) and, in the `advantages` field, each row's pair weight
(1, or 0 for the placeholder pair of a step whose groups gave none).
"""

from __future__ import annotations

import torch

from asyncrl.learner.config import TrainConfig
from asyncrl.learner.dpo import dpo_loss, group_pairs, interleave
from asyncrl.learner.engine import Batch, Engine, balance_rows, shard_rows
from asyncrl.learner.logprobs import token_entropy, token_logprobs
from asyncrl.learner.loss_config import ObjectiveConfig
from asyncrl.learner.objectives import kl_penalty


def pair_batch(
    batch: Batch, rewards: torch.Tensor | list[torch.Tensor], cfg: ObjectiveConfig
) -> tuple[Batch, dict[str, float]]:
    """`batch` (rows = the groups' samples in order, `rewards` [N, G], or one [G_i] tensor per
    group when a live change of sampling.group_size left two sizes in a batch) rearranged into
    pair layout. With no pair at all (every group tied) one placeholder pair of weight 0 and
    no response tokens keeps every rank's micro-batch count, and trains nothing."""
    groups = list(rewards.unbind(0)) if isinstance(rewards, torch.Tensor) else rewards
    chosen_parts, rejected_parts, paired_groups, offset = [], [], 0, 0
    for row in groups:
        c, r = group_pairs(row.reshape(1, -1), cfg.dpo_pairs)
        chosen_parts.append(c + offset)
        rejected_parts.append(r + offset)
        paired_groups += int(len(c) > 0)
        offset += row.numel()
    empty = torch.zeros(0, dtype=torch.long)
    chosen = torch.cat(chosen_parts) if groups else empty
    rejected = torch.cat(rejected_parts) if groups else empty
    stats = {"dpo_tied_groups": float(len(groups) - paired_groups)}
    if len(chosen) == 0:
        out = batch.rows(torch.tensor([0, min(1, len(batch) - 1)]))
        out.response_mask = torch.zeros_like(out.response_mask)
        out.advantages = torch.zeros(2)
        return out, stats
    out = batch.rows(interleave(chosen, rejected))
    out.advantages = torch.ones(len(out))
    return out, stats


def rows_per_step(cfg: ObjectiveConfig, groups: int, group_size: int) -> int:
    """Most rows a step's pair layout can hold (sizes the engine's micro-batches)."""
    if cfg.dpo_pairs == "best_worst":
        return 2 * groups
    return 2 * groups * (group_size // 2) * (group_size - group_size // 2)


def dpo_train_step(
    engine: Engine,
    batch: Batch,
    train: TrainConfig,
    objective: ObjectiveConfig,
    temperature: float,
    ref_model,
) -> dict[str, float]:
    """Optimizer steps over this rank's pairs: `train.ppo_epochs` passes over
    `train.mini_batches` mini-batches of pairs, each accumulated over the engine's
    micro-batches. Returns the step's statistics (means over this rank's pairs and tokens)."""
    if ref_model is None:
        raise RuntimeError("objective.name is dpo but no reference model was loaded")
    pairs = len(batch) // 2
    weights = batch.advantages[0::2]
    size = -(-pairs // max(1, train.mini_batches))
    minis = [torch.arange(a, min(pairs, a + size)) for a in range(0, pairs, max(size, 1))]
    sums: dict[str, float] = {}
    pair_sum = token_sum = loss_sum = 0.0
    for _ in range(train.ppo_epochs):
        for mini in minis:
            # Every rank sees the whole batch, so all agree on the step's pair count.
            normalizer = float(weights[mini].sum().clamp(min=1))
            for mb in _pair_micro_batches(engine, batch, mini, train):
                logits = engine.forward_logits(mb)[:, :-1]
                targets = mb.input_ids[:, 1:]
                mask = mb.response_mask[:, 1:]
                lp = token_logprobs(logits, targets, temperature=temperature)
                with torch.no_grad():
                    ent = token_entropy(logits.detach(), temperature=temperature)
                    ref_lp = _reference_logprobs(ref_model, mb, temperature)
                loss, m = dpo_loss(lp, ref_lp, mask, mb.advantages[0::2], objective, normalizer)
                engine.backward_and_step(loss)
                loss_sum += m.pop("loss")
                n_pairs = m["dpo_pairs"]
                pair_sum += n_pairs
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + (v if k == "dpo_pairs" else v * n_pairs)
                tokens = float(mask.sum())
                token_sum += tokens
                kl = kl_penalty(lp.detach(), ref_lp, objective.kl_estimator)
                sums["kl"] = sums.get("kl", 0.0) + float((kl * mask).sum())
                sums["entropy"] = sums.get("entropy", 0.0) + float((ent * mask).sum())
    passes = max(1, train.ppo_epochs)
    out = {
        k: v / passes
        if k == "dpo_pairs"
        else v / max(token_sum, 1.0)
        if k in ("kl", "entropy")
        else v / max(pair_sum, 1.0)
        for k, v in sums.items()
    }
    out["loss"] = loss_sum / max(1, train.ppo_epochs * len(minis))
    out["grad_norm"] = engine.grad_norm()
    out["lr"] = engine.lr()
    return out


def _pair_micro_batches(
    engine: Engine, batch: Batch, mini: torch.Tensor, train: TrainConfig
) -> list[Batch]:
    """This rank's micro-batches of the pairs `mini` (pair indices), whole pairs each:
    token-balanced over pairs (default) or contiguous; a placeholder pair where a rank has
    fewer pairs than micro-batches, so every rank runs the same number of backward passes."""
    if train.token_balanced:
        rows = 2 * mini
        lengths = batch.attention_mask[rows].sum(1) + batch.attention_mask[rows + 1].sum(1)
        parts = balance_rows(
            [int(x) for x in lengths], engine.rank, engine.world, engine.micro_batches
        )
        picked = [mini[ix] for ix in parts]
    else:
        slices = shard_rows(len(mini), engine.rank, engine.world, engine.micro_batches)
        picked = [mini[sl] for sl in slices]
    out = []
    for p in picked:
        if len(p):
            mb = batch.rows(interleave(2 * p, 2 * p + 1))
        else:
            mb = batch.rows(slice(0, 2))
            mb.response_mask = torch.zeros_like(mb.response_mask)
            mb.advantages = torch.zeros_like(mb.advantages)
        out.append(mb.trimmed().to(engine.device))
    return out


@torch.no_grad()
def _reference_logprobs(ref_model, mb: Batch, temperature: float) -> torch.Tensor:
    logits = ref_model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1]
    return token_logprobs(logits, mb.input_ids[:, 1:], temperature=temperature)
