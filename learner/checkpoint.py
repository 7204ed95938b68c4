"""Checkpoints and the Hugging Face export of the policy.

DeepSpeed saves module, optimizer, scheduler and step counters; what it does not hold goes
into its client state: the policy version, the hub's state (gate counters, prompt cursor,
waiting groups) and the RNG states."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from asyncrl.learner.engine import Engine

logger = logging.getLogger(__name__)


def checkpoint_dir(output_dir: str) -> Path:
    return Path(output_dir) / "checkpoint"


def save_checkpoint(engine: Engine, hub, version: int, output_dir: str) -> None:
    """Collective: every rank saves its part; `hub` is None off rank 0."""
    t = time.time()
    client = {
        "policy_version": version,
        "hub": hub.state_dict() if hub is not None else None,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
    }
    engine.save_checkpoint(str(checkpoint_dir(output_dir)), version, client)
    if engine.rank == 0:
        logger.info("checkpoint at version %d saved in %.1fs", version, time.time() - t)


def restore_checkpoint(engine: Engine, hub, output_dir: str) -> int:
    """Load the latest checkpoint into the engine, the RNGs and (rank 0) the hub; returns the
    policy version it was saved at."""
    path = checkpoint_dir(output_dir)
    if not (path / "latest").exists():
        raise FileNotFoundError(
            f"--resume: no checkpoint in {path}; start without --resume or "
            "set learner.output_dir to the run's directory"
        )
    client = engine.load_checkpoint(str(path))
    version = int(client["policy_version"])
    torch.set_rng_state(client["rng"]["torch"])
    np.random.set_state(client["rng"]["numpy"])
    if hub is not None:
        hub.load_state_dict(client["hub"])
        hub.advance_version(version)
        logger.info("resumed at version %d with %d waiting groups", version, hub.stats()["waiting"])
    return version


def export_policy(engine: Engine, tokenizer, version: int, output_dir: str) -> None:
    """The policy in Hugging Face format (safetensors + config + tokenizer) under
    `output_dir/export`. Collective under ZeRO-3; rank 0 writes."""
    tensors = engine.cpu_parameters()
    if engine.rank != 0:
        return
    out = Path(output_dir) / "export"
    engine.model.save_pretrained(
        out, state_dict={k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    )
    tokenizer.save_pretrained(out)
    (out / "asyncrl_version.json").write_text(json.dumps({"policy_version": version}))
