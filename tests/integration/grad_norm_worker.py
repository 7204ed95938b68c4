"""Run by test_grad_norm.py in a fresh process (DeepSpeed and the process group stay out of
the test runner): one optimizer step of the real Engine and `train_step` on dist_worker's
fixed batch, then the reported gradient norm and the parameter change, as JSON."""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    from asyncrl.launch.config import load_config
    from asyncrl.learner.engine import Engine, init_distributed, shutdown_distributed
    from asyncrl.learner.step import train_step
    from tests.integration.dist_worker import fixed_batch

    cfg = load_config(
        None,
        ["train.optimizer=sgd", "train.warmup_steps=0", "train.micro_batch_size=3"]
        + args.overrides,
    )
    torch.manual_seed(0)
    rank, world = init_distributed("cpu")
    engine = Engine(args.model, cfg.train, "float32", "cpu", rank, world, sequences_per_step=8)
    before = {k: v.clone() for k, v in engine.cpu_parameters().items()}
    batch = fixed_batch(engine.model.config.vocab_size)
    m = train_step(engine, batch, cfg.train, cfg.objective, cfg.sampling.temperature)
    after = engine.cpu_parameters()
    delta = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(after[k] - before[k]) for k in before])
    )
    with open(args.out, "w") as f:
        json.dump({"grad_norm": m["grad_norm"], "delta_norm": float(delta)}, f)
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
