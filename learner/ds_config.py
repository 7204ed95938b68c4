"""The DeepSpeed config the learner's engines are built with: the run's train settings mapped
onto DeepSpeed's keys, then the user's `train.deepspeed` dict merged over them (theirs wins)."""

from __future__ import annotations


def deepspeed_config(train_cfg, dtype: str, world: int, micro_batches: int) -> dict:
    """Our config mapped onto DeepSpeed's; `train.deepspeed` is merged over it."""
    cfg: dict = {
        "train_micro_batch_size_per_gpu": train_cfg.micro_batch_size,
        "gradient_accumulation_steps": micro_batches,
        "train_batch_size": train_cfg.micro_batch_size * micro_batches * world,
        "gradient_clipping": train_cfg.grad_clip,
        "zero_optimization": {"stage": train_cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train_cfg.zero_stage == 3:
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    elif dtype == "float16":
        cfg["fp16"] = {"enabled": True}
    return _merge(cfg, train_cfg.deepspeed)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
