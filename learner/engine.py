"""The DeepSpeed engine and all distributed plumbing of the learner.

Everything that knows about ranks lives here: process-group setup (gloo on CPU, NCCL on GPU),
the DeepSpeed config built from ours, broadcasting each step's batch from rank 0 to the other
ranks, the loss scaling that makes token-mean exact across micro-batches and ranks, gathering
ZeRO-3 parameters for publishing, and checkpoints. Objectives stay pure functions.
"""

from __future__ import annotations

import heapq
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist

from asyncrl.learner.ds_config import deepspeed_config
from asyncrl.protocol.sockets import free_port

logger = logging.getLogger(__name__)
T = TypeVar("T")


def init_distributed(device: str) -> tuple[int, int]:
    """Join (or create) the process group; returns (rank, world_size). Works under torchrun,
    the deepspeed launcher, or as a plain single process."""
    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    backend = "nccl" if device == "cuda" else "gloo"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Leave the process group at the end of a run that went well, as torch asks (NCCL:
    pending work finishes, no teardown warnings). Not on error paths: NCCL's teardown wants
    every rank to take part. A rank of several still exits through `exit_multi_rank`."""
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_multi_rank(code: int) -> NoReturn:
    """End a process that was one of several ranks without interpreter finalization. Even
    after `shutdown_distributed`, gloo's C++ worker threads outlive the Python groups (work
    objects of DeepSpeed's async collectives keep them) and can abort the process while
    Python tears down ("terminate called without an active exception", SIGABRT: about 1 in
    30 two-rank ZeRO-3 runs of tests/integration/dist_worker.py here, with or without
    destroying the group first), which torchrun reports as a failed job. Everything is
    written by then; logs and streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank_zero_first(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0, then on the other ranks: what rank 0 builds and caches (the tiny
    assets), the rest find in the cache instead of building it again alongside."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        out = fn()
    if world > 1:
        dist.barrier()
    if rank != 0:
        out = fn()
    return out


def broadcast_flag(flag: bool, world: int) -> bool:
    """Rank 0's `flag` on every rank (ranks must agree to stop or go on together)."""
    if world == 1:
        return flag
    t = torch.tensor([1 if flag else 0])
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_text(text: str | None, world: int) -> str | None:
    """Rank 0's `text` on every rank (a checkpoint tag all ranks must use alike)."""
    if world == 1:
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class Batch:
    """One optimizer step's sequences, padded on the right.

    input_ids, attention_mask, response_mask: [N, L]; behaviour_logprobs, versions: [N, L]
    aligned with input_ids (value at t is for token input_ids[t]); advantages: [N], or [N, L]
    aligned alike once a critic has computed per-token ones; rewards: [N] outcome rewards
    (None where nothing reads them)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    advantages: torch.Tensor
    rewards: torch.Tensor | None = None

    # A micro-batch's packed layout (learner.packing.PackedRows), set once it is prepared for
    # the forward pass; not a field: rows() and to() make plain batches.
    layout: object = None

    FIELDS = ("input_ids", "attention_mask", "response_mask", "behaviour_logprobs", "advantages")

    def _map(self, fn) -> Batch:
        rewards = None if self.rewards is None else fn(self.rewards)
        return Batch(*(fn(getattr(self, f)) for f in self.FIELDS), rewards=rewards)

    def rows(self, idx: slice | torch.Tensor) -> Batch:
        return self._map(lambda t: t[idx])

    def to(self, device) -> Batch:
        return self._map(lambda t: t.to(device))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def trimmed(self) -> Batch:
        """Drop padding columns beyond the longest row: a micro-batch of short sequences
        must not pay for the longest sequence of the whole step."""
        width = int(self.attention_mask.sum(1).max()) if len(self) else 1
        width = max(width, 1)
        return self._map(lambda t: t[:, :width] if t.dim() == 2 else t)


def broadcast_batch(batch: Batch | None, rank: int, world: int) -> Batch:
    """Send rank 0's batch to every rank as plain tensors (shapes first, then data)."""
    if world == 1:
        assert batch is not None
        return batch
    shape = torch.zeros(3, dtype=torch.long)
    if rank == 0:
        shape[:2] = torch.tensor(batch.input_ids.shape)
        shape[2] = int(batch.rewards is not None)
    dist.broadcast(shape, src=0)
    n, length, has_rewards = int(shape[0]), int(shape[1]), bool(shape[2])
    if rank != 0:
        batch = Batch(
            torch.empty(n, length, dtype=torch.long),
            torch.empty(n, length, dtype=torch.long),
            torch.empty(n, length, dtype=torch.float32),
            torch.empty(n, length, dtype=torch.float32),
            torch.empty(n, dtype=torch.float32),
            torch.empty(n, dtype=torch.float32) if has_rewards else None,
        )
    for f in (*Batch.FIELDS, "rewards") if has_rewards else Batch.FIELDS:
        t = getattr(batch, f).contiguous()
        dist.broadcast(t, src=0)
        setattr(batch, f, t)
    return batch


def balance_rows(
    lengths: list[int], rank: int, world: int, micro_batches: int
) -> list[torch.Tensor]:
    """Token-balanced micro-batches: rows go, longest first, to whichever of the
    `world x micro_batches` bins holds the fewest tokens (LPT scheduling), so every forward
    pass carries about the same number of tokens instead of the same number of rows. Every
    rank gets exactly `micro_batches` index tensors (possibly empty), as DeepSpeed's
    accumulation counter requires. Deterministic: every rank computes the same plan."""
    members, _ = lpt_bins(lengths, world * micro_batches)
    mine = members[rank * micro_batches : (rank + 1) * micro_batches]
    return [torch.tensor(sorted(m), dtype=torch.long) for m in mine]


def lpt_bins(lengths: list[int], bins: int) -> tuple[list[list[int]], list[int]]:
    """(members, loads): indices into `lengths` over `bins` bins, longest first into the bin
    holding the fewest tokens (ties to the lower bin), with each bin's total; bins may be
    empty. Longest-processing-time scheduling: micro-batches (`balance_rows`) and packed
    rows (`learner.packing.spread_rows`) both balance tokens with it."""
    heap = [(0, b) for b in range(bins)]
    members: list[list[int]] = [[] for _ in range(bins)]
    loads = [0] * bins
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, b = heapq.heappop(heap)
        members[b].append(i)
        loads[b] = load + lengths[i]
        heapq.heappush(heap, (loads[b], b))
    return members, loads


def shard_rows(n: int, rank: int, world: int, micro_batches: int) -> list[slice]:
    """Split rows [0, n) into `world` contiguous shards, then each shard into exactly
    `micro_batches` pieces (some possibly empty), so every rank runs the same number of
    backward passes (DeepSpeed's accumulation counter must agree across ranks)."""
    per_rank = -(-n // world)
    lo, hi = min(n, rank * per_rank), min(n, (rank + 1) * per_rank)
    size = -(-max(hi - lo, 1) // micro_batches)
    return [
        slice(min(hi, lo + i * size), min(hi, lo + (i + 1) * size)) for i in range(micro_batches)
    ]


def _grad_l2_norm(parameters) -> float:
    norms = [p.grad.detach().float().norm(2) for p in parameters if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms), 2))


def _causal_lm(path: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


class Engine:
    """A DeepSpeed-wrapped causal LM with the operations the training step needs."""

    def __init__(
        self,
        model_path: str,
        train_cfg,
        dtype: str,
        device: str,
        rank: int,
        world: int,
        sequences_per_step: int,
        load_model: Callable[[str, torch.dtype], torch.nn.Module] | None = None,
    ):
        """`load_model(path, dtype)` builds the module (default: the causal LM at the path;
        the critic passes its value model)."""
        import deepspeed

        self.rank, self.world, self.device = rank, world, device
        self.train_cfg = train_cfg
        per_rank = -(-sequences_per_step // world)
        self.micro_batches = max(1, -(-per_rank // train_cfg.micro_batch_size))
        torch_dtype = {
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[dtype]
        ds_cfg = deepspeed_config(train_cfg, dtype, world, self.micro_batches)
        if train_cfg.zero_stage == 3:
            # zero.Init patches tensor constructors; torch._dynamo (imported lazily by
            # transformers' masking utils) checks their signatures at import and fails under
            # the patch, so import it first.
            importlib.import_module("torch._dynamo")
            importlib.import_module("transformers.masking_utils")

            from transformers.integrations import HfDeepSpeedConfig

            # While this object lives, from_pretrained builds the model inside zero.Init and
            # loads each shard into the partitioned parameters (a bare zero.Init context
            # would leave transformers comparing full checkpoint shapes with empty partitions).
            self._hf_ds_config = HfDeepSpeedConfig(ds_cfg)
        model = (load_model or _causal_lm)(model_path, torch_dtype)
        model.config.use_cache = False
        # A torch optimizer avoids DeepSpeed's JIT-compiled fused Adam on machines without
        # a compiler toolchain for it; ZeRO wraps it all the same.
        if train_cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(model.parameters(), lr=train_cfg.lr)
        else:
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay
            )
        # Linear warmup that starts at lr/(warmup+1), not at 0: DeepSpeed's WarmupLR spends the
        # first step(s) at lr 0, which wastes them (and makes warmup_steps=0 train nothing at
        # step 1). A raw `scheduler` in train.deepspeed replaces this one.
        scheduler = None
        if "scheduler" not in ds_cfg:
            warmup = train_cfg.warmup_steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1))
            )
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
        )
        self._scheduler = scheduler
        self.model = self.engine.module
        # DeepSpeed reports the global gradient norm only through its own optimizer wrappers
        # (ZeRO 1-3, fp16/bf16), which compute it. At stage 0 in fp32 our torch optimizer runs
        # bare: `get_global_grad_norm()` stays None, with or without clipping (its clipping
        # path discards the norm it computes). Then we measure it ourselves.
        self._own_grad_norm = isinstance(self.engine.optimizer, torch.optim.Optimizer)
        self._grad_norm = float("nan")
        # Whether packed rows keep sequences apart in this model: their cost model
        # (learner.packing.RowCost) if so, False if not, None until the first packed
        # micro-batch checks it.
        self.packs = None

    # The scale makes DeepSpeed's two averagings (1/accumulation steps in backward, 1/world in
    # the gradient all-reduce) cancel, so gradients are exactly sum(token losses)/normalizer.
    @property
    def loss_scale(self) -> float:
        return float(self.micro_batches * self.world)

    def forward_logits(self, batch: Batch) -> torch.Tensor:
        out = self.engine(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=batch.attention_mask.to(self.device),
        )
        return out.logits

    def forward_packed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Logits of packed rows (learner.packing): per-sequence position ids, no mask."""
        return self.engine(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.loss_scale)
        if self._own_grad_norm and self.engine.is_gradient_accumulation_boundary():
            # After the boundary's backward the gradients are all-reduced (identical on
            # every rank) and not yet clipped: the norm DeepSpeed's optimizers report.
            self._grad_norm = _grad_l2_norm(self.model.parameters())
        self.engine.step()

    def grad_norm(self) -> float:
        """L2 norm of the full gradient before clipping, at the last optimizer step (NaN
        before the first)."""
        if self._own_grad_norm:
            return self._grad_norm
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def set_lr_multiplier(self, m: float) -> None:
        """Scale train.lr and its warmup schedule by `m` from the next optimizer step on (a
        live `train.lr_multiplier`). Set from the configured lr, not the current one, so the
        same `m` again, or after a resume, changes nothing. A raw scheduler given in
        train.deepspeed owns the lr: the multiplier is ignored there."""
        sched = self._scheduler
        if sched is None:
            return
        base = self.train_cfg.lr * m
        sched.base_lrs = [base] * len(sched.base_lrs)
        for group, fn in zip(sched.optimizer.param_groups, sched.lr_lambdas):
            group["lr"] = base * fn(sched.last_epoch)

    def parameter_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Full shape and dtype of every parameter (deduplicated as `named_parameters()`
        does), known without gathering under ZeRO-3."""
        return {
            n: (tuple(getattr(p, "ds_shape", p.shape)), p.dtype)
            for n, p in self.model.named_parameters()
        }

    def full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Each full parameter in `parameter_specs` order, valid only until the next one is
        asked for: under ZeRO-3 one parameter is gathered at a time (a collective: every rank
        must iterate; only rank 0's tensors are meaningful), so no full copy is ever held."""
        if self.train_cfg.zero_stage != 3:
            for name, p in self.model.named_parameters():
                yield name, p.detach()
            return
        import deepspeed

        for name, p in self.model.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                yield name, p.detach()

    def cpu_parameters(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the full parameters on rank 0 (HF export, tests), empty elsewhere.
        Collective under ZeRO-3. Publishing streams `full_parameters` instead."""
        out = {}
        for name, t in self.full_parameters():
            if self.rank == 0:
                out[name] = t.to("cpu", copy=True)
        return out

    def save_checkpoint(self, path: str, tag: str, client_state: dict) -> None:
        """Collective: every rank writes its part under `path/tag`. DeepSpeed's own `latest`
        file is not written (it would be a plain overwrite, torn by a kill); the caller
        keeps the pointer (learner/ckpt_files.py)."""
        self.engine.save_checkpoint(path, tag=tag, client_state=client_state, save_latest=False)

    def load_checkpoint(self, path: str, tag: str) -> dict:
        """Load checkpoint `path/tag`; returns our client state."""
        load_path, client_state = self.engine.load_checkpoint(path, tag=tag)
        if load_path is None:
            raise FileNotFoundError(f"no loadable DeepSpeed checkpoint at {path}/{tag}")
        return client_state or {}
