"""What a role needs before it starts: the model and data paths (the user's, or the embedded
tiny task built once and cached) and the device. Both roles get these from here, already
resolved, so neither builds assets nor knows about the tiny task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncrl.launch.config import AsyncRLConfig


@dataclass
class ResolvedData:
    model_path: str
    train_path: str
    eval_path: str | None


def resolve_data(cfg: AsyncRLConfig) -> ResolvedData:
    """The user's model and data, or the embedded tiny task (built once, cached)."""
    if cfg.model.path is not None:
        data = ResolvedData(cfg.model.path, cfg.data.train_path, cfg.data.eval_path)
    else:
        from asyncrl.launch.tiny import setup_tiny_assets

        assets = setup_tiny_assets(cfg.tiny)
        data = ResolvedData(
            assets.model_path,
            cfg.data.train_path or assets.train_path,
            cfg.data.eval_path or assets.eval_path,
        )
    if cfg.data.test_time:
        # Test-time RL: the evaluation prompts are the training prompts (labels withheld).
        data.train_path = data.eval_path
    return data


def resolve_device(choice: str) -> str:
    """`auto` is CUDA when torch sees a GPU, else the CPU."""
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
