"""Typed settings of the policy objective and the advantage estimator (the `objective:` and
`advantage:` sections). Kept apart from the tensor code in `learner.objectives` and
`learner.advantages` so that the CLI parses and validates a config without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from asyncrl.protocol.settings import StrictModel

ObjectiveName = Literal[
    "ppo",
    "dual_clip",
    "decoupled_ppo",
    "cispo",
    "gspo",
    "gspo_token",
    "aspo",
    "reinforce_tis",
    "dpo",
]
AggName = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


class ObjectiveConfig(StrictModel):
    """The policy loss and its knobs (the `objective:` section). Formulas: docs/objectives.md."""

    name: ObjectiveName = Field(
        "ppo",
        description="ppo (clipped ratio vs the behaviour policy), dual_clip (PPO + bound c·A "
        "for A<0), decoupled_ppo (AReaL: clip vs π_prox times truncated π_prox/μ), cispo "
        "(MiniMax-M1: stop-grad clipped IS weight · A · log π), gspo / gspo_token (sequence "
        "geometric-mean ratio), aspo (flipped IS weight for A>0 with soft dual clip), "
        "reinforce_tis (truncated-IS REINFORCE), dpo (online DPO on pairs of each group's "
        "samples against the frozen initial policy; dpo_* fields).",
    )
    eps_low: float = Field(0.2, ge=0.0, lt=1.0, description="Lower clip: ratios below 1-eps_low.")
    eps_high: float = Field(
        0.28, ge=0.0, description="Upper clip: ratios above 1+eps_high (0.28 = DAPO clip-higher)."
    )
    gspo_eps_low: float = Field(
        3e-4, ge=0.0, lt=1.0, description="gspo/gspo_token lower clip of the sequence ratio."
    )
    gspo_eps_high: float = Field(
        4e-4, ge=0.0, description="gspo/gspo_token upper clip of the sequence ratio."
    )
    dual_clip_c: float = Field(
        3.0,
        gt=1.0,
        description="dual_clip and aspo: the bound c (> 1) on the weight of A<0 tokens "
        "(aspo also of flipped A>0 weights).",
    )
    is_cap: float = Field(
        2.0,
        gt=0.0,
        description="C: cap of the behaviour importance weight (decoupled_ppo uses w = "
        "π_prox/μ, reinforce_tis r = π_θ/μ), and upper bound of the correction mask.",
    )
    is_floor: float = Field(
        0.0,
        ge=0.0,
        description="Lower bound of the correction mask (IcePop uses 0.5 with is_cap 5).",
    )
    is_mode: Literal["truncate", "mask"] = Field(
        "truncate",
        description="decoupled_ppo / reinforce_tis: truncate the weight at is_cap (TIS) or "
        "drop tokens whose weight exceeds it (MIS).",
    )
    is_level: Literal["token", "sequence"] = Field(
        "token",
        description="Importance weight per token, or one per sequence (product over its "
        "tokens) broadcast to its tokens.",
    )
    correction_mask: bool = Field(
        False,
        description="For every objective: drop tokens (or sequences, with is_level=sequence) "
        "whose behaviour weight π_prox/μ lies outside [is_floor, is_cap] (MIS / IcePop).",
    )
    agg: AggName = Field(
        "token-mean",
        description="token-mean: sum over all tokens / all tokens of the step (DAPO; split-"
        "invariant). seq-mean-token-mean: per-sequence mean, then mean over sequences (GRPO). "
        "seq-mean-token-sum-norm: per-sequence sum / norm_length, mean over sequences (Dr.GRPO).",
    )
    norm_length: int | None = Field(
        None,
        ge=1,
        description="seq-mean-token-sum-norm: the constant divisor (usually max new tokens). "
        "Empty: the padded response width of the batch.",
    )
    kl_beta: float = Field(
        0.0,
        ge=0.0,
        description="Weight of KL to a frozen reference model; 0 loads no reference (dpo "
        "always loads one).",
    )
    kl_estimator: Literal["k1", "k2", "k3", "k3+"] = Field(
        "k3",
        description="k1: log π/π_ref. k2: ½(log π/π_ref)². k3: π_ref/π − log(π_ref/π) − 1. "
        "k3+: value of k3 with the gradient of k2 (unbiased gradient of KL).",
    )
    entropy_coef: float = Field(
        0.0, ge=0.0, description="Entropy bonus weight (entropy is always measured)."
    )
    dpo_beta: float = Field(
        0.1,
        gt=0.0,
        description="dpo: β, the weight of the implicit KL to the reference (sigmoid), or τ of "
        "IPO's target margin 1/(2τ).",
    )
    dpo_loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="dpo: sigmoid (−log σ(β·margin), DPO) or ipo ((margin − 1/(2β))², IPO, "
        "with log-ratios averaged per token as TRL's DPOTrainer does).",
    )
    dpo_pairs: Literal["best_worst", "all"] = Field(
        "best_worst",
        description="dpo: per group, the highest- against the lowest-reward sample (first of "
        "equals), or every pair whose rewards differ (a sample in k pairs is trained k times). "
        "Groups whose rewards are all equal give no pair.",
    )
    log_ratio_clamp: float = Field(
        20.0, gt=0.0, description="Log-ratios are clamped to ±this before exp, so no inf/NaN."
    )
    positive_lm_coef: float = Field(
        0.0,
        ge=0.0,
        description="VAPO's positive-example LM loss: weight of the NLL (token mean) of the "
        "samples whose reward exceeds positive_lm_threshold, added to the policy loss; 0 = off.",
    )
    positive_lm_threshold: float = Field(
        0.5,
        description="A sample is positive for positive_lm_coef when its reward is above this.",
    )

    @model_validator(mode="after")
    def _check(self) -> ObjectiveConfig:
        if self.is_floor >= self.is_cap:
            raise ValueError(
                f"objective.is_floor ({self.is_floor}) must be below objective.is_cap "
                f"({self.is_cap})"
            )
        if self.name == "dpo" and (self.kl_beta > 0 or self.entropy_coef > 0):
            raise ValueError(
                "objective.kl_beta and objective.entropy_coef are terms of the policy-gradient "
                "objectives; dpo's distance to the reference is objective.dpo_beta"
            )
        return self

    @property
    def needs_reference(self) -> bool:
        """Whether the learner must load the frozen initial policy (KL term, or DPO)."""
        return self.kl_beta > 0 or self.name == "dpo"


class AdvantageConfig(StrictModel):
    """Which advantage estimator the learner uses (the `advantage:` section)."""

    name: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "remax", "gae"] = Field(
        "grpo",
        description="grpo: (r - group mean) / (group std + eps) (DeepSeekMath). dr_grpo: "
        "r - group mean, no std (Dr. GRPO). rloo: r - mean of the other G-1 samples (RLOO). "
        "reinforce_pp: whitened over the whole batch (REINFORCE++). remax: r - reward of one "
        "extra greedy sample per prompt, generated by the generator (ReMax). gae: per-token "
        "GAE from a learned critic (PPO with a value model; the `critic:` section).",
    )
    eps: float = Field(1e-6, gt=0.0, description="Added to standard deviations before dividing.")
    whiten: Literal["token", "sample"] = Field(
        "token",
        description="reinforce_pp only: token (token-weighted mean and unbiased variance over "
        "every response token of the batch, as verl and, up to N/(N-1), OpenRLHF whiten; "
        "longer responses weigh more) or sample (one value per sample).",
    )
    reinforce_pp_group_baseline: bool = Field(
        False,
        description="reinforce_pp only: subtract the group mean before whitening over the batch "
        "(the 'REINFORCE++-baseline' variant for groups of G > 1).",
    )
    gamma: float = Field(
        1.0, ge=0.0, le=1.0, description="gae: discount per response token (1 for outcome rewards)."
    )
    lam_actor: float | Literal["adaptive"] = Field(
        0.95,
        description="gae: λ of the policy's advantages, a number in [0, 1] or `adaptive`: "
        "1 - 1/(alpha·l) per sample of l response tokens, clamped to [0, 1] (VAPO).",
    )
    lam_critic: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="gae: λ of the critic's value targets (VAPO uses 1: Monte-Carlo returns).",
    )
    alpha: float = Field(
        0.05, gt=0.0, description="gae with lam_actor=adaptive: α of 1 - 1/(α·l) (VAPO: 0.05)."
    )
    gae_whiten: bool = Field(
        False,
        description="gae: whiten the policy's advantages over all response tokens of the batch "
        "(token-weighted mean and std).",
    )
    kl_in_reward: bool = Field(
        False,
        description="gae: add the per-token penalty -kl_reward_beta·(μ - log π_ref) to the "
        "token rewards (InstructGPT; μ = behaviour logprob), besides the outcome reward on "
        "the last token. Loads the frozen reference. Independent of objective.kl_beta.",
    )
    kl_reward_beta: float = Field(
        0.01, ge=0.0, description="gae with kl_in_reward: β of the per-token KL reward."
    )

    @model_validator(mode="after")
    def _check_gae(self) -> AdvantageConfig:
        lam = self.lam_actor
        if lam != "adaptive" and not 0.0 <= lam <= 1.0:
            raise ValueError(f"advantage.lam_actor ({lam}) must be in [0, 1] or 'adaptive'")
        if self.kl_in_reward and self.name != "gae":
            raise ValueError(
                "advantage.kl_in_reward needs per-token rewards: set advantage.name=gae "
                "(outcome estimators have one reward per sample)"
            )
        return self
