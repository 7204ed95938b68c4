"""Run by torchrun from test_distributed.py: two training steps of the real Engine and
`train_step` on a fixed batch, then rank 0 saves the resulting parameters.

Every layout (1 rank whole, 1 rank in micro-batches, 2 ranks, 2 ranks ZeRO-3) sees the same
batch; with plain SGD the update is lr x gradient, so equal parameters mean equal gradients.
"""

from __future__ import annotations

import argparse
import sys

import torch


def fixed_batch(vocab: int, seed: int = 0):
    from asyncrl.learner.engine import Batch

    g = torch.Generator().manual_seed(seed)
    n, length, prompt = 8, 12, 4
    input_ids = torch.randint(4, vocab, (n, length), generator=g)
    lengths = torch.randint(prompt + 1, length + 1, (n,), generator=g)
    attention = (torch.arange(length)[None] < lengths[:, None]).long()
    response = attention.float().clone()
    response[:, :prompt] = 0
    input_ids = input_ids * attention  # pad id 0 beyond each length
    behaviour = -torch.rand(n, length, generator=g) * 3 * response
    advantages = torch.randn(n, generator=g)
    return Batch(input_ids, attention, response, behaviour, advantages)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    from asyncrl.generators.weights import decode_safetensors
    from asyncrl.launch.config import load_config
    from asyncrl.learner.engine import (
        Engine,
        broadcast_batch,
        exit_multi_rank,
        init_distributed,
        shutdown_distributed,
    )
    from asyncrl.learner.step import load_reference, train_step
    from asyncrl.learner.weights import BlobWriter

    cfg = load_config(
        None,
        [
            "train.optimizer=sgd",
            "train.lr=0.5",
            "train.warmup_steps=0",
            "train.grad_clip=0",
            "sampling.temperature=0.8",
            *args.overrides,
        ],
    )
    torch.manual_seed(0)
    rank, world = init_distributed("cpu")
    ref_model = None
    if cfg.objective.needs_reference:
        ref_model = load_reference(args.model, "float32", "cpu")
    engine = Engine(args.model, cfg.train, "float32", "cpu", rank, world, sequences_per_step=8)
    vocab = engine.model.config.vocab_size
    batch = broadcast_batch(fixed_batch(vocab) if rank == 0 else None, rank, world)
    if cfg.objective.name == "dpo":
        # Read as pair layout: rows 2k (chosen) and 2k+1 (rejected), every pair weight 1.
        batch.advantages = torch.ones(len(batch))
    for _ in range(2):
        train_step(engine, batch, cfg.train, cfg.objective, cfg.sampling.temperature, ref_model)
    params = engine.cpu_parameters()
    # The publisher's path: each parameter copied into the blob as it is gathered. It must
    # hold exactly the parameters gathered whole (both are collective under ZeRO-3).
    writer = BlobWriter(engine.parameter_specs()) if rank == 0 else None
    for name, t in engine.full_parameters():
        if writer is not None:
            writer.write(name, t)
    if rank == 0:
        published = decode_safetensors(writer.finish())
        assert published.keys() == params.keys()
        for k, v in params.items():
            assert torch.equal(published[k], v), k
        torch.save({k: v.detach().cpu().clone() for k, v in params.items()}, args.out)
    torch.distributed.barrier()
    shutdown_distributed()
    if world > 1:
        exit_multi_rank(0)  # as `asyncrl learner` does
    return 0


if __name__ == "__main__":
    sys.exit(main())
