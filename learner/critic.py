"""The learned critic of PPO with GAE (and VAPO): a value model trained on the learner as
its own DeepSpeed engine, next to the policy's.

Each step, on every rank and after the batch was broadcast: `prepare` scores the batch with
the current critic (values are never taken from generators: rollouts are off-policy), builds
token rewards (outcome on the last token, optional KL-in-reward), runs GAE twice (λ_critic
for the value targets, λ_actor for the policy's advantages) and puts the per-token advantages
into the batch; `train` then takes the value-loss optimizer steps. Both are collective: every
rank scores its share of rows and the results are summed across ranks.

The value model is the model's transformer with a one-output token-classification head
(Hugging Face `AutoModelForTokenClassification`, dropout off): loaded from the policy it gets
a fresh head, from a reward model (sequence classification) it keeps the reward head's
weights, which share the name `score`.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from asyncrl.learner.advantages import compute_gae
from asyncrl.learner.config import TrainConfig
from asyncrl.learner.critic_config import CriticConfig
from asyncrl.learner.engine import Batch, Engine, balance_rows, shard_rows
from asyncrl.learner.logprobs import token_logprobs
from asyncrl.learner.loss_config import AdvantageConfig
from asyncrl.learner.step import mini_batch_rows
from asyncrl.learner.value import (
    actor_lambda,
    explained_variance,
    masked_moments,
    token_rewards,
    value_loss,
    whiten,
)

logger = logging.getLogger(__name__)

CRITIC_TAG = "critic"  # the critic's DeepSpeed state inside each checkpoint tag directory


def load_value_model(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """Transformer + scalar head from `path` (a causal LM, a reward model or a critic)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path)
    config.num_labels = 1
    # Dropout on the head would make the values of one batch differ between the forward
    # that computes advantages and the one that trains.
    config.classifier_dropout = 0.0
    model = AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=dtype)
    model.config.use_cache = False
    return model


def critic_train_config(train: TrainConfig, cfg: CriticConfig) -> TrainConfig:
    """The policy's batch layout (micro-batch size, token balance, mini-batches, epochs) with
    the critic's optimizer, LR schedule and ZeRO stage."""
    stage = train.zero_stage if cfg.zero_stage is None else cfg.zero_stage
    return train.model_copy(
        update={
            "lr": cfg.lr,
            "zero_stage": stage,
            "optimizer": cfg.optimizer,
            "weight_decay": cfg.weight_decay,
            "warmup_steps": cfg.warmup_steps,
            "grad_clip": cfg.grad_clip,
            "deepspeed": cfg.deepspeed,
        }
    )


class Critic:
    """The value model's engine and the per-step glue between it, GAE and the batch."""

    def __init__(
        self,
        cfg: CriticConfig,
        advantage: AdvantageConfig,
        train: TrainConfig,
        model_path: str,
        dtype: str,
        device: str,
        rank: int,
        world: int,
        sequences_per_step: int,
    ):
        self.cfg, self.advantage = cfg, advantage
        self.train_cfg = critic_train_config(train, cfg)
        path = model_path if cfg.init == "policy" else str(cfg.path)
        # A fresh head must start alike on every rank (the learner seeds each rank apart).
        with torch.random.fork_rng():
            torch.manual_seed(train.seed)
            self.engine = Engine(
                path,
                self.train_cfg,
                dtype,
                device,
                rank,
                world,
                sequences_per_step,
                load_model=load_value_model,
            )
        self._old_values: torch.Tensor | None = None
        self._returns: torch.Tensor | None = None

    # ------------------------------------------------------------------ scoring
    def _parts(self, batch: Batch) -> list[tuple[torch.Tensor, Batch]]:
        """This rank's micro-batches of `batch` with their row indices (empty index: one
        dummy row with no response tokens, so every rank runs as many passes)."""
        e, train = self.engine, self.train_cfg
        if train.token_balanced:
            lengths = [int(x) for x in batch.attention_mask.sum(1)]
            parts = balance_rows(lengths, e.rank, e.world, e.micro_batches)
        else:
            slices = shard_rows(len(batch), e.rank, e.world, e.micro_batches)
            parts = [torch.arange(sl.start, sl.stop, dtype=torch.long) for sl in slices]
        out = []
        for ix in parts:
            if len(ix):
                mb = batch.rows(ix)
            else:
                mb = batch.rows(slice(0, 1))
                mb.response_mask = torch.zeros_like(mb.response_mask)
            out.append((ix, mb.trimmed().to(e.device)))
        return out

    def _gather_rows(self, fn, batch: Batch) -> torch.Tensor:
        """[N, L-1] of `fn(micro_batch)` ([n, w-1] each), every row computed by one rank and
        summed across ranks."""
        n, width = len(batch), batch.input_ids.shape[1] - 1
        out = torch.zeros(n, width, dtype=torch.float32, device=self.engine.device)
        for ix, mb in self._parts(batch):
            v = fn(mb)
            if len(ix):
                out[ix.to(out.device), : v.shape[1]] = v.float()
        if self.engine.world > 1:
            dist.all_reduce(out)
        return out.cpu()

    def _values(self, mb: Batch) -> torch.Tensor:
        return self.engine.forward_logits(mb)[..., 0][:, :-1]

    @torch.no_grad()
    def values(self, batch: Batch) -> torch.Tensor:
        """V(s_t) for every position of the shifted frame: [N, L-1] (collective)."""
        return self._gather_rows(self._values, batch) * batch.response_mask[:, 1:]

    @torch.no_grad()
    def _reference_logprobs(self, batch: Batch, ref_model, temperature: float) -> torch.Tensor:
        def ref(mb: Batch) -> torch.Tensor:
            logits = ref_model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
            return token_logprobs(logits[:, :-1], mb.input_ids[:, 1:], temperature=temperature)

        return self._gather_rows(ref, batch)

    def prepare(self, batch: Batch, ref_model=None, temperature: float = 1.0) -> dict[str, float]:
        """Score `batch`, compute GAE and set `batch.advantages` to per-token advantages
        ([N, L], aligned with input_ids). Collective. Returns the step's value statistics."""
        if batch.rewards is None:
            raise ValueError("advantage.name is 'gae' but the batch carries no rewards")
        adv_cfg = self.advantage
        mask = batch.response_mask[:, 1:].float()
        values = self.values(batch)
        kl = None
        if adv_cfg.kl_in_reward:
            if ref_model is None:
                raise ValueError("advantage.kl_in_reward needs the reference model")
            ref = self._reference_logprobs(batch, ref_model, temperature)
            kl = (batch.behaviour_logprobs[:, 1:] - ref) * mask
        rewards = token_rewards(batch.rewards, mask, kl, adv_cfg.kl_reward_beta)
        _, returns = compute_gae(rewards, values, mask, adv_cfg.gamma, adv_cfg.lam_critic)
        lam = actor_lambda(mask, adv_cfg.lam_actor, adv_cfg.alpha)
        adv, _ = compute_gae(rewards, values, mask, adv_cfg.gamma, lam)
        if adv_cfg.gae_whiten:
            adv = whiten(adv, mask, adv_cfg.eps)
        full = torch.zeros_like(batch.response_mask, dtype=torch.float32)
        full[:, 1:] = adv
        batch.advantages = full
        self._old_values, self._returns = values, returns
        v_mean, v_std = masked_moments(values, mask)
        a_mean, a_std = masked_moments(adv, mask)
        stats = {
            "value_mean": v_mean,
            "value_std": v_std,
            "value_returns_mean": masked_moments(returns, mask)[0],
            "value_explained_variance": explained_variance(values, returns, mask),
            "adv_mean": a_mean,
            "adv_std": a_std,
            "adv_abs_max": float((adv.abs() * mask).max()) if mask.numel() else 0.0,
        }
        if isinstance(lam, torch.Tensor):
            stats["lam_actor_mean"] = float(lam.mean())
        if kl is not None:
            stats["kl_reward"] = float(kl.sum() / mask.sum().clamp(min=1))
        return stats

    # ------------------------------------------------------------------ training
    def train(self, batch: Batch) -> dict[str, float]:
        """The critic's optimizer steps on the value targets `prepare` computed: critic.epochs
        (default train.ppo_epochs) passes over train.mini_batches mini-batches. Collective."""
        if self._old_values is None or self._returns is None:
            raise RuntimeError("Critic.train before Critic.prepare")
        train, e = self.train_cfg, self.engine
        old_all, ret_all = self._old_values, self._returns
        minis = mini_batch_rows(len(batch), train.mini_batches)
        epochs = self.cfg.epochs or train.ppo_epochs
        loss_sum, clipped, tokens = 0.0, 0.0, 0.0
        for _ in range(epochs):
            for rows in minis:
                mini = batch.rows(rows)
                old_mini, ret_mini = old_all[rows], ret_all[rows]
                normalizer = float(mini.response_mask[:, 1:].sum().clamp(min=1))
                for ix, mb in self._parts(mini):
                    v = self._values(mb).float()
                    width = v.shape[1]
                    pick = ix if len(ix) else torch.zeros(1, dtype=torch.long)
                    old = old_mini[pick, :width].to(v.device)
                    ret = ret_mini[pick, :width].to(v.device)
                    mask = mb.response_mask[:, 1:]
                    loss, st = value_loss(v, old, ret, mask, self.cfg.value_clip, normalizer)
                    e.backward_and_step(self.cfg.coef * loss)
                    loss_sum += float(loss.detach())
                    clipped += st["clipped"]
                    tokens += st["tokens"]
        steps = epochs * len(minis)
        self._old_values = self._returns = None
        # Sums of this rank's micro-batches: the loss over all of them is the step's (each
        # was divided by the whole mini-batch's token count); ranks add theirs.
        agg = torch.tensor([loss_sum, clipped, tokens], dtype=torch.float64)
        if e.world > 1:
            agg = agg.to(e.device)
            dist.all_reduce(agg)
            agg = agg.cpu()
        return {
            "value_loss": float(agg[0]) / steps,
            "value_clip_fraction": float(agg[1]) / max(float(agg[2]), 1.0),
            "critic_grad_norm": e.grad_norm(),
            "critic_lr": e.lr(),
        }
