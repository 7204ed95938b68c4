"""`asyncrl bench`: where the time goes, as ratios measured side by side in one run.

Every figure compares two things measured in the same process tree, alternating trials so
that load from other jobs on a shared machine hits both sides alike; nothing is compared
across runs. Figures:

- `transport_ratio`: rollout groups (G = 8, 1,000-token responses) through our codec and
  sockets (encode + send + receive + decode) vs the same bytes as raw ZeroMQ frames.
- `weights_ratio`: publishing a state (serialise + digest, streamed: chunked fetch by 2
  generators as the chunks are written + verify + deserialise) vs fetching the same bytes as
  raw chunks over the same sockets, in steady state (several versions in a row, buffers
  recycled as in a run).
- `objective_overhead`: objective + advantage time as a fraction of a learner step.
- `learner_*`: training tokens/s and MFU of the learner update (see `launch.bench_learner`).
- `pipeline_*`, `async_over_sync`, `ideal_overlap_ratio`, `pipeline_losses`, `machine_busy`,
  `staleness`: `asyncrl local` at η = 4 and η = 0 (see `launch.bench_pipeline`).
- `learning` (the full bench's last section; `--without-learning` leaves it out): held-out
  accuracy against wall time and samples by η and objective (see `launch.bench_learning`).
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from asyncrl.protocol.codec import encode
from asyncrl.protocol.messages import RolloutGroup
from asyncrl.protocol.sockets import SocketFactory, recv, send

logger = logging.getLogger(__name__)

TARGETS = {
    "pipeline_efficiency_async": (">=", 0.95),
    "async_over_sync_of_ideal": (">=", 0.95),
    "learner_padding_share_packed": ("<=", 0.05),
    "transport_ratio": (">=", 0.8),
    "weights_ratio": (">=", 0.5),
    "objective_overhead": ("<=", 0.03),
}


def _rollout_group(g: int = 8, t: int = 1000, seed: int = 0) -> RolloutGroup:
    rng = np.random.default_rng(seed)
    n = g * t
    return RolloutGroup(
        lease_id="0" * 32,
        generator_id="bench",
        tokens=rng.integers(0, 150_000, n, dtype=np.int32),
        logprobs=-rng.random(n, dtype=np.float32) * 5,
        versions=np.full(n, 3, np.int32),
        lengths=np.full(g, t, np.int32),
        finish_reasons=["length"] * g,
        generate_seconds=1.0,
    )


def _in_processes(target, args_list: list[tuple]) -> float:
    """Run `target(*args, go)` in forked processes (generators and the learner are separate
    processes in production: threads would serialise their Python work on one GIL). Each
    child connects, reports ready, and starts on `go`; returns seconds from go to the last
    child's exit."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ready, go = ctx.Barrier(len(args_list) + 1), ctx.Event()
    procs = [ctx.Process(target=target, args=(*a, ready, go)) for a in args_list]
    for p in procs:
        p.start()
    ready.wait()
    t = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"bench child failed with exit code {p.exitcode}")
    return time.perf_counter() - t


def _push_messages(endpoint: str, n: int, codec: bool, ready, go) -> None:
    ctx = zmq.Context()
    push = SocketFactory(context=ctx).socket(zmq.PUSH, server=False)
    push.connect(endpoint)
    group = _rollout_group()
    raw = [bytes(f) for f in encode(group)]
    ready.wait()
    go.wait()
    for _ in range(n):
        if codec:
            send(push, group)
        else:
            push.send_multipart(raw, copy=False)
    push.close(linger=-1)
    ctx.term()


def bench_transport(quick: bool) -> dict:
    """A generator process pushes n groups; this process receives them (and decodes them in
    codec mode). Time = first send to last receive, alternating codec and raw trials."""
    nbytes = sum(len(bytes(f)) for f in encode(_rollout_group()))
    n = 300 if quick else 1000
    ctx = zmq.Context()
    pull = SocketFactory(context=ctx).socket(zmq.PULL, server=True)
    endpoint = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
    codec, plain = [], []
    for _ in range(3 if quick else 5):
        for use_codec, times in ((True, codec), (False, plain)):
            receiver = threading.Thread(
                target=lambda c=use_codec: [
                    recv(pull) if c else pull.recv_multipart(copy=False) for _ in range(n)
                ]
            )
            receiver.start()
            sent = _in_processes(_push_messages, [(endpoint, n, use_codec)])
            receiver.join()
            times.append(sent)
    pull.close(0)
    ctx.term()
    best_codec, best_plain = min(codec), min(plain)
    return {
        "transport_ratio": round(best_plain / best_codec, 3),
        "transport_codec_mb_per_s": round(n * nbytes / best_codec / 1e6, 1),
        "transport_raw_mb_per_s": round(n * nbytes / best_plain / 1e6, 1),
        "transport_message_bytes": nbytes,
    }


def bench_objective(quick: bool) -> dict:
    """Time a learner step on the tiny model and, on the same tensors, the objective and
    advantage computations alone."""
    import torch

    from asyncrl.launch.config import load_config
    from asyncrl.launch.tiny import setup_tiny_assets
    from asyncrl.learner.advantages import compute_advantages
    from asyncrl.learner.engine import Batch, Engine, init_distributed
    from asyncrl.learner.objectives import policy_loss
    from asyncrl.learner.step import train_step

    cfg = load_config("tiny-cpu", [])
    assets = setup_tiny_assets(cfg.tiny)
    init_distributed("cpu")
    n_groups, g = cfg.train.groups_per_step, cfg.sampling.group_size
    n = n_groups * g
    engine = Engine(assets.model_path, cfg.train, "float32", "cpu", 0, 1, n)
    gen = torch.Generator().manual_seed(0)
    length = 16
    vocab = engine.model.config.vocab_size
    ids = torch.randint(4, vocab, (n, length), generator=gen)
    resp = torch.zeros(n, length)
    resp[:, 8:] = 1
    mu = -torch.rand(n, length, generator=gen) * resp
    rewards = torch.randint(0, 2, (n_groups, g), generator=gen).float()
    adv, _ = compute_advantages(rewards, cfg.advantage)
    batch = Batch(ids, torch.ones_like(ids), resp, mu, adv.reshape(-1))
    reps = 5 if quick else 20
    train_step(engine, batch, cfg.train, cfg.objective, cfg.sampling.temperature)  # warm up
    step, obj = [], []
    lp = (-torch.rand(n, length - 1, generator=gen)).requires_grad_(True)
    for _ in range(reps):
        t = time.perf_counter()
        train_step(engine, batch, cfg.train, cfg.objective, cfg.sampling.temperature)
        step.append(time.perf_counter() - t)
        t = time.perf_counter()
        compute_advantages(rewards, cfg.advantage)
        loss, _ = policy_loss(lp, mu[:, 1:], batch.advantages, resp[:, 1:], cfg.objective)
        loss.backward()
        obj.append(time.perf_counter() - t)
    return {
        "objective_overhead": round(statistics.median(obj) / statistics.median(step), 4),
        "learner_step_seconds": round(statistics.median(step), 4),
        "objective_seconds": round(statistics.median(obj), 5),
    }


_MEMORY_PROBE = """
import sys, torch
from asyncrl.learner.logprobs import token_logprobs
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
n, t, v, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
logits = torch.randn(n, t, v, requires_grad=True)
tokens = torch.randint(0, v, (n, t))
# Reset the peak-RSS mark (Linux): whatever building the inputs took is not counted.
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
if mode == "naive":
    lp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
else:
    lp = token_logprobs(logits, tokens, chunk_size=1024)
lp.sum().backward()
print(status("VmHWM:") - base)
"""


def bench_memory(quick: bool) -> dict:
    """Peak memory of scoring tokens (forward + backward) above the logits themselves:
    a whole-batch log_softmax vs the learner's chunked logsumexp, each in a fresh process."""
    import subprocess
    import sys

    n, t, v = (4, 512, 32000) if quick else (8, 1024, 32000)
    out = {}
    for mode in ("naive", "chunked"):
        proc = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(n), str(t), str(v), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = int(proc.stdout.strip().splitlines()[-1])
    logits_bytes = n * t * v * 4
    return {
        "logprob_peak_extra_mb_naive": round(out["naive"] / 1e6, 1),
        "logprob_peak_extra_mb_chunked": round(out["chunked"] / 1e6, 1),
        "logprob_logits_mb": round(logits_bytes / 1e6, 1),
        "logprob_memory_ratio": round(out["chunked"] / max(out["naive"], 1), 3),
    }


def _bench_weights(quick: bool) -> dict:
    from asyncrl.launch.bench_weights import bench_weights

    return bench_weights(quick)


def _bench_learner(quick: bool) -> dict:
    from asyncrl.launch.bench_learner import bench_learner

    return bench_learner(quick)


def run_bench(
    quick: bool = False, only: list[str] | None = None, learning: dict | None = None
) -> dict:
    """The sections named in `only` (default: all). `learning` runs when given, a dict of
    `launch.bench_learning.bench_learning`'s keywords (empty: its defaults)."""
    sections = {
        "transport": bench_transport,
        "weights": _bench_weights,
        "objective": bench_objective,
        "memory": bench_memory,
        "learner": _bench_learner,
    }
    results: dict = {"quick": quick}
    t0 = time.time()
    for name, fn in sections.items():
        if only and name not in only:
            continue
        t = time.time()
        results.update(fn(quick))
        logger.info("bench %s done in %.0fs", name, time.time() - t)
    from asyncrl.learner.engine import shutdown_distributed

    shutdown_distributed()  # the objective and learner sections join a one-rank group
    if not only or "pipeline" in only:
        from asyncrl.launch.bench_pipeline import bench_pipeline

        t = time.time()
        with tempfile.TemporaryDirectory(prefix="asyncrl-bench-") as d:
            results.update(bench_pipeline(quick, Path(d)))
        logger.info("bench pipeline done in %.0fs", time.time() - t)
    if learning is not None and (not only or "learning" in only):
        from asyncrl.launch.bench_learning import bench_learning

        t = time.time()
        results.update(bench_learning(quick, **(learning or {})))
        logger.info("bench learning done in %.0fs", time.time() - t)
    results["bench_seconds"] = round(time.time() - t0, 1)
    return results


def format_table(results: dict) -> str:
    lines = [f"{'figure':<34}{'value':>14}  target"]
    for key, value in results.items():
        if isinstance(value, (dict, list)):
            continue
        target = TARGETS.get(key)
        mark = ""
        if target and isinstance(value, (int, float)):
            op, bound = target
            ok = value >= bound if op == ">=" else value <= bound
            mark = f"{op} {bound}  {'ok' if ok else 'MISSED'}"
        lines.append(f"{key:<34}{value!s:>14}  {mark}")
    for eta, counts in results.get("staleness", {}).items():
        lines.append(f"staleness {eta:<24}{json.dumps(counts):>14}")
    for key, value in results.items():
        if isinstance(value, (dict, list)) and key != "staleness":
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines)
