"""Run by torchrun from test_critic_distributed.py: two critic steps (score, GAE with
KL-in-reward against the frozen reference, value-loss updates) of the real `Critic` on a fixed
batch, then rank 0 saves the critic's parameters, the per-token advantages of each step and
the step statistics.

With plain SGD the update is lr x gradient, so equal parameters in every layout (1 rank
whole, 1 rank in micro-batches, 2 ranks ZeRO-3) mean equal value-loss gradients, and equal
advantages mean the values were scored and gathered across ranks alike.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    from asyncrl.launch.config import load_config
    from asyncrl.learner.critic import Critic
    from asyncrl.learner.engine import (
        broadcast_batch,
        exit_multi_rank,
        init_distributed,
        shutdown_distributed,
    )
    from asyncrl.learner.step import load_reference
    from tests.integration.dist_worker import fixed_batch

    cfg = load_config(
        None,
        [
            "advantage.name=gae",
            "advantage.lam_actor=adaptive",
            "advantage.alpha=0.5",
            "advantage.lam_critic=1.0",
            "advantage.kl_in_reward=true",
            "advantage.kl_reward_beta=0.1",
            "critic.optimizer=sgd",
            "critic.lr=0.05",
            "critic.grad_clip=0",
            # Small enough that the second epoch's values hit the clip.
            "critic.value_clip=0.01",
            "train.ppo_epochs=2",
            *args.overrides,
        ],
    )
    torch.manual_seed(0)
    rank, world = init_distributed("cpu")
    # Loaded before the engines, as the learner does: under ZeRO-3 it must still be whole.
    ref_model = load_reference(args.model, "float32", "cpu")
    critic = Critic(
        cfg.critic, cfg.advantage, cfg.train, args.model, "float32", "cpu", rank, world, 8
    )
    batch = None
    if rank == 0:
        batch = fixed_batch(critic.engine.model.config.vocab_size)
        g = torch.Generator().manual_seed(1)
        batch.rewards = torch.randint(0, 2, (len(batch),), generator=g).float()
    batch = broadcast_batch(batch, rank, world)
    advantages, stats = [], []
    for _ in range(2):
        st = critic.prepare(batch, ref_model, temperature=0.8)
        st.update(critic.train(batch))
        advantages.append(batch.advantages.clone())
        stats.append(st)
    params = critic.engine.cpu_parameters()
    if rank == 0:
        saved = {k: v.detach().cpu().clone() for k, v in params.items()}
        torch.save({"params": saved, "advantages": advantages, "stats": stats}, args.out)
    torch.distributed.barrier()
    shutdown_distributed()
    if world > 1:
        exit_multi_rank(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
