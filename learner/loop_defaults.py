"""The training-loop settings an objective needs to be the objective its paper describes.

`decoupled_ppo` (AReaL) clips `u = π_θ / π_prox`, where π_prox is the policy the batch started
from. With one optimizer step per batch π_θ is π_prox throughout the step, so `u ≡ 1`, its clip
never binds and the loss degenerates to truncated-IS policy gradient; AReaL splits each batch
into 4 mini-batches, so that from the second one on π_θ has moved away from π_prox. The other
objectives clip against the behaviour policy μ and are meaningful with one step per batch.

The defaults apply only where the user set none of the loop settings (pydantic's
`model_fields_set`); a user's explicit setting always wins, and one that makes the objective
degenerate earns a one-line warning at startup. Torch-free: the config is resolved before
anything heavy loads.
"""

from __future__ import annotations

from asyncrl.learner.config import TrainConfig
from asyncrl.learner.loss_config import ObjectiveConfig

# The loop settings that decide how many optimizer steps a batch gets.
LOOP_FIELDS = ("mini_batches", "ppo_epochs")

# objective name -> loop settings it needs (documented in docs/objectives.md).
LOOP_DEFAULTS: dict[str, dict[str, int]] = {
    "decoupled_ppo": {"mini_batches": 4},
}


def apply_loop_defaults(objective: ObjectiveConfig, train: TrainConfig, sequences: int) -> bool:
    """Sets `objective`'s loop defaults on `train` unless the user set any loop setting.
    `sequences`: sequences per batch (a batch cannot be split finer). Returns whether it
    changed anything."""
    wanted = LOOP_DEFAULTS.get(objective.name)
    if not wanted or set(LOOP_FIELDS) & train.model_fields_set:
        return False
    for name, value in wanted.items():
        if name == "mini_batches":
            value = max(1, min(value, sequences))
        setattr(train, name, value)
    return True


def optimizer_steps_per_batch(train: TrainConfig) -> int:
    return train.mini_batches * train.ppo_epochs


def loop_warnings(objective: ObjectiveConfig, train: TrainConfig) -> list[str]:
    """One line per setting that makes the objective degenerate (logged at startup)."""
    if objective.name == "decoupled_ppo" and optimizer_steps_per_batch(train) == 1:
        return [
            "objective decoupled_ppo with one optimizer step per batch (train.mini_batches=1, "
            "train.ppo_epochs=1): pi_prox equals pi_theta during the step, so its clip never "
            "binds and it is truncated-IS policy gradient; set train.mini_batches (AReaL: 4) or "
            "train.ppo_epochs above 1"
        ]
    return []
