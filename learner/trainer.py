"""The learner's training loop: take B groups, compute advantages and the objective, step,
bump the policy version, publish weights, evaluate, report.

Rank 0 runs the hub and builds each batch; every rank trains on its shard (see
`learner.engine`). This module holds no socket code and no distributed calls beyond the
engine's helpers.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from asyncrl.buffer.replay import BufferedGroup
from asyncrl.learner.advantages import compute_advantages
from asyncrl.learner.engine import (
    Batch,
    Engine,
    balance_rows,
    broadcast_batch,
    init_distributed,
    resolve_device,
    shard_rows,
    shutdown_distributed,
)
from asyncrl.learner.logprobs import token_entropy, token_logprobs
from asyncrl.learner.objectives import policy_loss

logger = logging.getLogger(__name__)


@dataclass
class ResolvedData:
    model_path: str
    train_path: str
    eval_path: str | None


def resolve_data(cfg) -> ResolvedData:
    """The user's model and data, or the embedded tiny task (built once, cached)."""
    if cfg.model.path is not None:
        return ResolvedData(cfg.model.path, cfg.data.train_path, cfg.data.eval_path)
    from asyncrl.launch.tiny import setup_tiny_assets

    assets = setup_tiny_assets(cfg.tiny)
    return ResolvedData(
        assets.model_path,
        cfg.data.train_path or assets.train_path,
        cfg.data.eval_path or assets.eval_path,
    )


def build_batch(groups: list[BufferedGroup], cfg, pad_id: int) -> tuple[Batch, dict]:
    """Pack groups into right-padded tensors; advantages from each group's rewards."""
    datas = [g.payload for g in groups]
    rewards = torch.tensor(np.stack([d.rewards for d in datas]), dtype=torch.float32)
    baseline = None
    if all(d.baseline_reward is not None for d in datas):
        baseline = torch.tensor([d.baseline_reward for d in datas], dtype=torch.float32)
    adv, adv_metrics = compute_advantages(rewards, cfg.advantage, baseline_rewards=baseline)
    seqs, behaviour, starts = [], [], []
    for d in datas:
        for resp, lp in zip(d.responses, d.logprobs):
            seqs.append(np.concatenate([d.prompt.token_ids, resp]))
            behaviour.append(lp)
            starts.append(len(d.prompt.token_ids))
    n, length = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention = torch.zeros(n, length, dtype=torch.long)
    resp_mask = torch.zeros(n, length, dtype=torch.float32)
    mu = torch.zeros(n, length, dtype=torch.float32)
    for i, (s, lp, st) in enumerate(zip(seqs, behaviour, starts)):
        input_ids[i, : len(s)] = torch.from_numpy(s.astype(np.int64))
        attention[i, : len(s)] = 1
        resp_mask[i, st : len(s)] = 1.0
        mu[i, st : len(s)] = torch.from_numpy(lp.astype(np.float32))
    stats = {
        "reward_mean": float(rewards.mean()),
        "response_tokens": float(resp_mask.sum()),
        **{f"adv_{k}": v for k, v in adv_metrics.items()},
    }
    for d in datas:
        for k, v in d.reward_metrics.items():
            stats[k] = stats.get(k, 0.0) + v / len(datas)
    return Batch(input_ids, attention, resp_mask, mu, adv.reshape(-1)), stats


def train_step(engine: Engine, batch: Batch, cfg, ref_model=None) -> dict[str, float]:
    """Optimizer steps over this rank's shard of `batch`: `train.ppo_epochs` passes over
    `train.mini_batches` mini-batches, each accumulated over the engine's micro-batches.

    With more than one optimizer step per batch, π_prox is scored once before the first step
    (decoupled objectives need the policy the batch started from); with one step the objective
    uses π_θ detached, which is the same value without the extra forward pass.
    """
    temperature = cfg.sampling.temperature
    minis = mini_batch_rows(len(batch), cfg.train.mini_batches)
    multi = cfg.train.ppo_epochs * len(minis) > 1
    prox = _proximal_logprobs(engine, batch, minis, cfg) if multi else {}
    use_ref = ref_model is not None and cfg.objective.kl_beta > 0
    entropy_grad = cfg.objective.entropy_coef > 0
    totals: dict[str, float] = {}
    weight_sum = 0.0
    for _ in range(cfg.train.ppo_epochs):
        for mi, rows in enumerate(minis):
            mini = batch.rows(rows)
            # Normalizer: every valid token of this optimizer step across ranks (token-mean)
            # or every sequence (seq-mean modes); all ranks see the full batch, so it agrees.
            if cfg.objective.agg == "token-mean":
                normalizer = float(mini.response_mask[:, 1:].sum().clamp(min=1))
            else:
                normalizer = float(max(1, len(mini)))
            for i, mb in enumerate(_micro_batches(engine, mini, cfg)):
                logits = engine.forward_logits(mb)[:, :-1]
                targets = mb.input_ids[:, 1:]
                mask = mb.response_mask[:, 1:]
                lp = token_logprobs(logits, targets, temperature=temperature)
                if entropy_grad:
                    ent = token_entropy(logits, temperature=temperature)
                else:
                    with torch.no_grad():
                        ent = token_entropy(logits.detach(), temperature=temperature)
                ref_lp = _reference_logprobs(ref_model, mb, temperature) if use_ref else None
                loss, m = policy_loss(
                    lp,
                    mb.behaviour_logprobs[:, 1:],
                    mb.advantages,
                    mask,
                    cfg.objective,
                    prox_logprobs=prox.get((mi, i)),
                    ref_logprobs=ref_lp,
                    entropy=ent,
                    normalizer=normalizer,
                )
                engine.backward_and_step(loss)
                w = float(mask.sum())
                weight_sum += w
                for k, v in m.items():
                    if k == "is_weight_max":
                        totals[k] = max(totals.get(k, 0.0), float(v))
                    elif k == "loss":
                        totals[k] = totals.get(k, 0.0) + float(v)
                    else:
                        totals[k] = totals.get(k, 0.0) + float(v) * w
    optimizer_steps = cfg.train.ppo_epochs * len(minis)
    out = {
        k: (
            v
            if k == "is_weight_max"
            else v / optimizer_steps
            if k == "loss"
            else v / max(weight_sum, 1.0)
        )
        for k, v in totals.items()
    }
    out["grad_norm"] = engine.grad_norm()
    out["lr"] = engine.lr()
    return out


def _micro_batches(engine: Engine, mini: Batch, cfg) -> list[Batch]:
    """This rank's micro-batches of a mini-batch, token-balanced (default) or contiguous
    row slices; each trimmed to its own longest row and moved to the device."""
    if cfg.train.token_balanced:
        lengths = [int(x) for x in mini.attention_mask.sum(1)]
        parts = balance_rows(lengths, engine.rank, engine.world, engine.micro_batches)
        picked = [mini.rows(ix) if len(ix) else _empty_rows(mini) for ix in parts]
    else:
        slices = shard_rows(len(mini), engine.rank, engine.world, engine.micro_batches)
        picked = [mini.rows(sl) if sl.stop > sl.start else _empty_rows(mini) for sl in slices]
    return [mb.trimmed().to(engine.device) for mb in picked]


def mini_batch_rows(n: int, mini_batches: int) -> list[slice]:
    """Contiguous row ranges of the mini-batches (one optimizer step each)."""
    size = -(-n // max(1, mini_batches))
    return [slice(i, min(n, i + size)) for i in range(0, n, max(size, 1))]


@torch.no_grad()
def _proximal_logprobs(engine: Engine, batch: Batch, minis, cfg) -> dict:
    """π_prox for every micro-batch this rank will train on, before any update."""
    temperature = cfg.sampling.temperature
    out = {}
    for mi, rows in enumerate(minis):
        mini = batch.rows(rows)
        for i, mb in enumerate(_micro_batches(engine, mini, cfg)):
            logits = engine.forward_logits(mb)[:, :-1]
            out[(mi, i)] = token_logprobs(logits, mb.input_ids[:, 1:], temperature=temperature)
    return out


@torch.no_grad()
def _reference_logprobs(ref_model, mb: Batch, temperature: float) -> torch.Tensor:
    logits = ref_model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1]
    return token_logprobs(logits, mb.input_ids[:, 1:], temperature=temperature)


def _empty_rows(batch: Batch) -> Batch:
    """One row with nothing to learn: keeps ranks' backward counts equal when a shard is
    shorter than the others."""
    mb = batch.rows(slice(0, 1))
    mb.response_mask = torch.zeros_like(mb.response_mask)
    return mb


def load_reference(model_path: str, dtype: str, device: str):
    """The frozen initial policy for the KL term: weights only, no optimizer state, no
    gradients (replicated on every rank, also under ZeRO-3)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    model.requires_grad_(False)
    return model.eval().to(device)


def evaluate(engine: Engine, tokenizer, rows, cfg) -> float | None:
    from asyncrl.learner.evaluation import greedy_accuracy

    if not rows:
        return None
    # Under ZeRO-3 every rank must run the same forwards (parameters are gathered
    # collectively); otherwise rank 0 alone evaluates.
    if engine.rank != 0 and cfg.train.zero_stage != 3:
        return None
    return greedy_accuracy(
        engine.model,
        tokenizer,
        rows,
        prompt_field=cfg.data.prompt_field,
        answer_field=cfg.data.answer_field,
        max_new_tokens=cfg.sampling.max_new_tokens,
    )


class Learner:
    """Owns the engine, (on rank 0) the hub and metrics server, and the loop."""

    def __init__(self, cfg, resume: bool = False, events=None):
        self.cfg = cfg
        self.resume = resume
        self.events = events  # where JSON event lines go (default: stdout)
        self.stop = threading.Event()
        self.checkpoint_dir = Path(cfg.learner.output_dir) / "checkpoint"

    def run(self) -> dict | None:
        from transformers import AutoTokenizer

        cfg = self.cfg
        device = resolve_device(cfg.model.device)
        rank, world = init_distributed(device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed + rank)
        if rank == 0:
            data = resolve_data(cfg)
        if world > 1:
            dist.barrier()  # rank 0 built the tiny assets; the rest now hit the cache
        if rank != 0:
            data = resolve_data(cfg)
        tokenizer = AutoTokenizer.from_pretrained(data.model_path)
        self.model_path = data.model_path
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        sequences = cfg.train.groups_per_step * cfg.sampling.group_size
        per_step = -(-sequences // cfg.train.mini_batches)
        engine = Engine(data.model_path, cfg.train, cfg.model.dtype, device, rank, world, per_step)
        self.engine = engine
        ref_model = None
        if cfg.objective.kl_beta > 0:
            ref_model = load_reference(data.model_path, cfg.model.dtype, device)
        hub = None
        eval_rows: list[dict] = []
        if rank == 0:
            hub, eval_rows = self._start_hub(data, tokenizer)
        if rank == 0 or cfg.train.zero_stage == 3:
            if data.eval_path and rank != 0:
                eval_rows = _eval_rows(data.eval_path, cfg)
        self._install_signals()

        version = 0
        if self.resume:
            version = self._restore(engine, hub)
        restored = None
        if hub is not None:
            restored = {k: hub.stats()[k] for k in ("accepted", "in_flight", "waiting", "consumed")}
            # Serve only now: a lease issued before the checkpoint's gate counters and
            # version are restored would be counted against the wrong state.
            hub.start()
        start_version = version
        self._publish(engine, hub, version)
        acc_before = evaluate(engine, tokenizer, eval_rows, cfg)
        if rank == 0:
            if acc_before is not None:
                hub.metrics.eval_accuracy.set(acc_before)
            _emit(
                self.events,
                {
                    "event": "learner_ready",
                    "endpoints": hub.endpoints,
                    "metrics": self.metrics_url,
                    "accuracy_before": acc_before,
                    "policy_version": version,
                    "resumed": self.resume,
                    "gate": restored,  # as restored, before any lease of this lifetime
                },
            )
            logger.info("held-out accuracy before RL: %s", _fmt(acc_before))
        t0 = time.time()
        tokens_trained = 0.0
        busy_seconds = 0.0  # update + publish: the learner's time when it never waits
        last_log = (t0, 0.0)
        acc = acc_before
        while version < cfg.train.steps:
            stop_now = self._should_stop(t0)
            if world > 1:
                flag = torch.tensor([1 if stop_now else 0])
                dist.broadcast(flag, src=0)
                stop_now = bool(flag.item())
            if stop_now:
                break
            batch, stats = None, {}
            if rank == 0:
                tw = time.time()
                groups = hub.wait_for_groups(cfg.train.groups_per_step, self.stop)
                hub.metrics.step_seconds.labels(phase="wait").observe(time.time() - tw)
                if groups is None:
                    batch = None
                else:
                    batch, stats = build_batch(groups, cfg, pad_id)
                    stats["staleness_max"] = max(version - g.version for g in groups)
                    stats["staleness_mean"] = float(np.mean([version - g.version for g in groups]))
            if world > 1:
                flag = torch.tensor([1 if batch is None else 0])
                dist.broadcast(flag, src=0)
                if flag.item():
                    break
            elif batch is None:
                break
            batch = broadcast_batch(batch, rank, world)
            tu = time.time()
            m = train_step(engine, batch, cfg, ref_model)
            version += 1
            busy_seconds += time.time() - tu
            tokens_trained += float(batch.response_mask.sum())
            if rank == 0:
                hub.metrics.step_seconds.labels(phase="update").observe(time.time() - tu)
                hub.advance_version(version)
                self._record(hub, m, stats, batch)
            if version % cfg.train.publish_every == 0 or version == cfg.train.steps:
                tp = time.time()
                self._publish(engine, hub, version)
                busy_seconds += time.time() - tp
            if (
                cfg.train.eval_every
                and version % cfg.train.eval_every == 0
                and version < cfg.train.steps
            ):
                te = time.time()
                acc = evaluate(engine, tokenizer, eval_rows, cfg)
                if rank == 0 and acc is not None:
                    hub.metrics.eval_accuracy.set(acc)
                    hub.metrics.step_seconds.labels(phase="eval").observe(time.time() - te)
            if cfg.train.checkpoint_every and version % cfg.train.checkpoint_every == 0:
                self._save(engine, hub, version)
            if rank == 0 and (version % cfg.train.log_every == 0 or version == 1):
                now = time.time()
                tps = (tokens_trained - last_log[1]) / max(now - last_log[0], 1e-9)
                last_log = (now, tokens_trained)
                logger.info(
                    "step %d | reward %.3f | acc %s | staleness mean %.2f max %d | loss %.4f"
                    " | clip %.3f | trained tok/s %.0f | buffer %d",
                    version,
                    stats.get("reward_mean", float("nan")),
                    _fmt(acc),
                    stats.get("staleness_mean", 0.0),
                    stats.get("staleness_max", 0),
                    m.get("loss", float("nan")),
                    _clip(m),
                    tps,
                    hub.stats()["waiting"],
                )
        rl_seconds = time.time() - t0
        self._save(engine, hub, version)
        self._export(engine, tokenizer, version)
        acc_after = evaluate(engine, tokenizer, eval_rows, cfg)
        summary = None
        if rank == 0:
            if acc_after is not None:
                hub.metrics.eval_accuracy.set(acc_after)
            hub_stats = hub.stats()
            summary = {
                "event": "summary",
                "accuracy_before": acc_before,
                "accuracy_after": acc_after,
                "rl_seconds": round(rl_seconds, 2),
                "steps": version - start_version,
                "policy_version": version,
                "max_staleness": cfg.buffer.max_staleness,
                "max_staleness_seen": hub_stats["staleness_seen_max"],
                "trained_tokens_per_second": round(tokens_trained / max(rl_seconds, 1e-9), 1),
                "generators_seen": hub_stats["generators_seen"],
                "training_tokens_per_second": round(tokens_trained / max(busy_seconds, 1e-9), 1),
                "generation_tokens_per_second": round(hub_stats["generation_capacity"], 1),
                "staleness_counts": {str(k): v for k, v in hub_stats["staleness_counts"].items()},
            }
            out = Path(cfg.learner.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            logger.info(
                "held-out accuracy %s -> %s in %.0fs RL (%d steps)",
                _fmt(acc_before),
                _fmt(acc_after),
                rl_seconds,
                version,
            )
            hub.stop()
        if world > 1:
            dist.barrier()
        shutdown_distributed()
        return summary

    # ------------------------------------------------------------------ helpers
    def _start_hub(self, data: ResolvedData, tokenizer):
        from asyncrl.launch.serve import start_metrics_server
        from asyncrl.learner.data import PromptSource, load_rows
        from asyncrl.learner.hub import Hub
        from asyncrl.learner.metrics import LearnerMetrics
        from asyncrl.protocol.sockets import setup_socket_factory

        cfg = self.cfg
        prompts = PromptSource(
            load_rows(data.train_path), tokenizer, cfg.data.prompt_field, seed=cfg.data.shuffle_seed
        )
        metrics = LearnerMetrics()
        factory = setup_socket_factory(cfg.security, "server")
        hub = Hub(cfg, prompts, tokenizer, metrics, factory)
        if cfg.learner.weights_transport == "nccl":
            from asyncrl.learner.nccl import NcclPublisher

            hub.attach_nccl(NcclPublisher(cfg, hub.weights, metrics, self.engine.device))
        self.metrics_url, self._http = start_metrics_server(
            cfg.learner.bind_host, cfg.learner.metrics_port, metrics.registry, hub.healthy
        )
        eval_rows = _eval_rows(data.eval_path, cfg) if data.eval_path else []
        return hub, eval_rows

    def _save(self, engine: Engine, hub, version: int) -> None:
        """Checkpoint: DeepSpeed state plus what DeepSpeed does not hold (collective)."""
        t = time.time()
        client = {
            "policy_version": version,
            "hub": hub.state_dict() if hub is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
        }
        engine.save_checkpoint(str(self.checkpoint_dir), version, client)
        if engine.rank == 0:
            logger.info("checkpoint at version %d saved in %.1fs", version, time.time() - t)

    def _restore(self, engine: Engine, hub) -> int:
        if not (self.checkpoint_dir / "latest").exists():
            raise FileNotFoundError(
                f"--resume: no checkpoint in {self.checkpoint_dir}; start without --resume or "
                "set learner.output_dir to the run's directory"
            )
        client = engine.load_checkpoint(str(self.checkpoint_dir))
        version = int(client["policy_version"])
        torch.set_rng_state(client["rng"]["torch"])
        np.random.set_state(client["rng"]["numpy"])
        if hub is not None:
            hub.load_state_dict(client["hub"])
            hub.advance_version(version)
            waiting = hub.stats()["waiting"]
            logger.info("resumed at version %d with %d waiting groups", version, waiting)
        return version

    def _export(self, engine: Engine, tokenizer, version: int) -> None:
        """The policy in Hugging Face format (safetensors + config + tokenizer)."""
        tensors = engine.cpu_parameters()
        if engine.rank != 0:
            return
        out = Path(self.cfg.learner.output_dir) / "export"
        engine.model.save_pretrained(
            out, state_dict={k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        )
        tokenizer.save_pretrained(out)
        (out / "asyncrl_version.json").write_text(json.dumps({"policy_version": version}))

    def _publish(self, engine: Engine, hub, version: int) -> None:
        from asyncrl.learner.weights import BlobWriter

        t = time.time()
        # Each parameter is copied into the blob as it is gathered (ZeRO-3) or read: the
        # blob is the only full copy made. Other ranks take part in the gathers only.
        writer = BlobWriter(engine.parameter_specs(), hub.spare_buffer()) if hub else None
        # The zmq transport streams: generators fetch the first chunks while later ones are
        # written. Disk and nccl need the finished blob (a file, a broadcast plan).
        streamed = None
        if hub is not None and self.cfg.learner.weights_transport == "zmq":
            streamed = hub.begin_publish(version, writer)
        for name, tensor in engine.full_parameters():
            if writer is not None:
                writer.write(name, tensor)
        if hub is not None:
            blob = writer.finish()
            if streamed is not None:
                hub.finish_publish(streamed)
            else:
                path = ""
                if self.cfg.learner.weights_transport == "disk":
                    from asyncrl.learner.weights import write_version_dir

                    path = write_version_dir(
                        self.cfg.learner.weights_dir, version, blob, self.model_path
                    )
                hub.publish(version, blob, path)
            dt = time.time() - t
            hub.metrics.publish_seconds.observe(dt)
            hub.metrics.step_seconds.labels(phase="publish").observe(dt)

    def _record(self, hub, m: dict, stats: dict, batch: Batch) -> None:
        hm = hub.metrics
        hm.steps.inc()
        hm.tokens.inc(float(batch.response_mask.sum()))
        hm.loss.set(m.get("loss", 0.0))
        hm.clip_fraction.set(_clip(m))
        hm.is_weight_max.set(m.get("is_weight_max", 0.0))
        hm.kl.set(m.get("kl", 0.0))
        hm.entropy.set(m.get("entropy", 0.0))
        hm.grad_norm.set(m.get("grad_norm", 0.0))
        hm.reward_mean.set(stats.get("reward_mean", 0.0))

    def _should_stop(self, t0: float) -> bool:
        if self.stop.is_set():
            return True
        limit = self.cfg.train.max_seconds
        return bool(limit and time.time() - t0 >= limit)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            logger.warning("signal %d: stopping after the current step", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def _eval_rows(path: str, cfg) -> list[dict]:
    from asyncrl.learner.data import load_rows

    return load_rows(path)[: cfg.data.eval_size]


def _clip(m: dict) -> float:
    return float(
        m.get("clip_frac_low", 0.0) + m.get("clip_frac_high", 0.0) + m.get("clip_frac_dual", 0.0)
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _emit(stream, event: dict) -> None:
    """Machine-readable events, one JSON line each (the launcher reads them)."""
    import sys

    stream = stream or sys.stdout
    stream.write(json.dumps(event) + "\n")
    stream.flush()
