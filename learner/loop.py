"""The learner's step loop: wait for groups → batch → step → version → publish → evaluate →
checkpoint → log, and the run's summary.

Every rank runs the loop; rank 0 holds the hub (None elsewhere), builds each batch and
decides, for all ranks, when to stop. The hub is used through its public API only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from asyncrl.learner.checkpoint import Checkpointer
from asyncrl.learner.config import RunConfig
from asyncrl.learner.cpu_usage import CpuSnapshot
from asyncrl.learner.engine import Batch, Engine, broadcast_batch, broadcast_flag, broadcast_text
from asyncrl.learner.evaluation import EnvHooks, eval_reward, evaluate_rows
from asyncrl.learner.publishers import WeightPublisher
from asyncrl.learner.rewards.config import eval_reward_config
from asyncrl.learner.step import build_batch, train_step

logger = logging.getLogger(__name__)

# wait: for B trainable groups; batch: packing them (rank 0); update: the optimizer step(s);
# publish: the weights on the step's path; eval; checkpoint_report: checkpoint and tracking.
LOOP_PHASES = ("wait", "batch", "update", "publish", "eval", "checkpoint_report")


def evaluate(
    engine: Engine,
    tokenizer,
    rows: list[dict],
    cfg: RunConfig,
    hub=None,
    stats=None,
    env: EnvHooks | None = None,
) -> float | None:
    """Held-out evaluation with the training reward (`learner.evaluation`). Returns the
    accuracy (None without labelled rows, and on ranks that do not evaluate); with `hub`
    its gauges are set, and every figure goes into `stats` when given."""
    if not rows:
        return None
    # Under ZeRO-3 every rank must run the same forwards (parameters are gathered
    # collectively); otherwise rank 0 alone evaluates. Rank 0 alone scores.
    if engine.rank != 0 and cfg.train.zero_stage != 3:
        return None
    ev = cfg.eval
    scoring = eval_reward_config(cfg.reward, ev.functions)
    reward = eval_reward(scoring) if engine.rank == 0 else None
    max_new = cfg.sampling.max_new_tokens  # live on rank 0 (asyncrl ctl): ranks use its value
    if cfg.train.zero_stage == 3 and engine.world > 1:
        max_new = int(broadcast_text(str(max_new), engine.world))
    out = evaluate_rows(
        engine.model,
        tokenizer,
        rows,
        reward,
        prompt_field=cfg.data.prompt_field,
        answer_field=cfg.reward.answer_field,
        samples=ev.samples,
        temperature=ev.temperature,
        success_threshold=ev.success_threshold,
        max_new_tokens=max_new,
        env=env,
    )
    if hub is not None:
        for name, gauge in (
            ("eval_reward_mean", hub.metrics.eval_reward_mean),
            ("eval_accuracy", hub.metrics.eval_accuracy),
            ("eval_pass_at_k", hub.metrics.eval_pass_at_k),
            ("eval_maj_at_k", hub.metrics.eval_maj_at_k),
        ):
            if name in out:
                gauge.set(out[name])
    if stats is not None:
        stats.update(out)
    return out.get("eval_accuracy")


class StepLoop:
    """Trains from `version` up to `train.steps` (or until `stop`, or `train.max_seconds`)."""

    def __init__(
        self,
        cfg: RunConfig,
        engine: Engine,
        hub,
        publisher: WeightPublisher,
        tokenizer,
        eval_rows: list[dict],
        ref_model,
        stop: threading.Event,
        version: int,
        accuracy: float | None,
        checkpointer: Checkpointer,
        reporter=None,
        env: EnvHooks | None = None,
        critic=None,
    ) -> None:
        self.cfg, self.engine, self.hub, self.publisher = cfg, engine, hub, publisher
        self.checkpointer = checkpointer
        self.tokenizer, self.eval_rows, self.ref_model = tokenizer, eval_rows, ref_model
        self.stop = stop
        self.version = self.start_version = version
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.tokens_trained = 0.0
        self.busy_seconds = 0.0  # update + publish: the learner's time when it never waits
        self.rl_seconds = 0.0
        self.accuracy = accuracy  # the latest held-out accuracy
        # Rank 0's wall time by phase, for the summary (`asyncrl bench` explains lost
        # throughput with it); what no phase claims is the loop's own overhead.
        self.phase_seconds = dict.fromkeys(LOOP_PHASES, 0.0)
        # Rank 0: takes each step's statistics (learner.tracking.Tracking); None elsewhere.
        self.reporter = reporter
        self.env = env
        # advantage.name=gae: the learned critic (learner.critic.Critic) on every rank.
        self.critic = critic
        # eval.deferred: (version, loop seconds, CPU copy of the policy) per evaluation point.
        self.snapshots: list[tuple[int, float, dict]] = []
        self.t0 = time.time()
        # CPU seconds of the RL loop by spender (learner.cpu_usage), set when `run` ends.
        self.cpu_seconds: dict[str, float] = {}
        self.first_wait_seconds = 0.0  # of phase_seconds["wait"], the first step's
        if cfg.eval.deferred and (engine.world > 1 or cfg.train.zero_stage == 3):
            raise ValueError(
                "eval.deferred copies the whole policy on one rank: it needs a single learner "
                "rank and train.zero_stage 0-2"
            )
        if cfg.eval.deferred and cfg.eval.every:
            copy_bytes = sum(
                t.numel() * t.element_size() for t in engine.model.state_dict().values()
            )
            # One per multiple of `every` after `version` and before the last step.
            copies = max(0, (cfg.train.steps - 1) // cfg.eval.every - version // cfg.eval.every)
            why = deferred_copies_too_big(copy_bytes, copies, available_memory())
            if why:
                raise ValueError(why)

    def run(self) -> None:
        train = self.cfg.train
        t0 = self.t0 = time.time()
        cpu0 = CpuSnapshot.take()
        while self.version < train.steps:
            if broadcast_flag(self._should_stop(t0), self.engine.world):
                break
            batch, stats = self._next_batch()
            if broadcast_flag(batch is None, self.engine.world):
                break
            settings = self._settings()
            self._step(broadcast_batch(batch, self.engine.rank, self.engine.world), stats, settings)
        self.rl_seconds = time.time() - t0
        self.cpu_seconds = CpuSnapshot.take().since(cpu0)

    def _should_stop(self, t0: float) -> bool:
        if self.stop.is_set():
            return True
        limit = self.cfg.train.max_seconds
        return bool(limit and time.time() - t0 >= limit)

    def _next_batch(self) -> tuple[Batch | None, dict]:
        """Rank 0: the next B groups packed, or None when stopped while waiting."""
        if self.hub is None:
            return None, {}
        tw = time.time()
        groups = self.hub.wait_for_groups(self.cfg.train.groups_per_step, self.stop)
        tb = time.time()
        self.phase_seconds["wait"] += tb - tw
        if self.version == self.start_version:
            self.first_wait_seconds = tb - tw  # the pipeline filling: once per run
        self.hub.metrics.step_seconds.labels(phase="wait").observe(tb - tw)
        if groups is None:
            return None, {}
        batch, stats = build_batch(groups, self.cfg.advantage, self.pad_id, self.cfg.objective)
        self.phase_seconds["batch"] += time.time() - tb
        staleness = [self.version - g.version for g in groups]
        stats["staleness_max"] = max(staleness)
        stats["staleness_mean"] = float(np.mean(staleness))
        return batch, stats

    def _settings(self) -> dict:
        """This step's live settings (`asyncrl ctl set`), read once, rank 0's on every rank.
        A changed temperature applies to this step's scoring whatever temperature the batch
        was sampled at: the importance weights exp(π_θ - μ) correct for that as for staleness,
        since μ is what the generator really sampled from."""
        s = self.hub.tuning.trainer_settings() if self.hub is not None else None
        if self.engine.world > 1:
            s = json.loads(broadcast_text(json.dumps(s), self.engine.world))
        self.engine.set_lr_multiplier(s["lr_multiplier"])
        return s

    def _step(self, batch: Batch, stats: dict, settings: dict) -> None:
        cfg, hub = self.cfg, self.hub
        tu = time.time()
        temperature = settings["temperature"]
        m: dict = {}
        if self.critic is not None:
            m.update(self.critic.prepare(batch, self.ref_model, temperature))
            m.update(self.critic.train(batch))
        if self.critic is None or self.version >= cfg.critic.pretrain_steps:
            m.update(
                train_step(
                    self.engine, batch, cfg.train, cfg.objective, temperature, self.ref_model
                )
            )
        self.version += 1
        version = self.version
        self.busy_seconds += time.time() - tu
        self.phase_seconds["update"] += time.time() - tu
        self.tokens_trained += float(batch.response_mask.sum())
        if hub is not None:
            hub.metrics.step_seconds.labels(phase="update").observe(time.time() - tu)
            hub.advance_version(version)
        if version % settings["publish_every"] == 0 or version == cfg.train.steps:
            tp = time.time()
            self.publisher.publish(version)
            self.busy_seconds += time.time() - tp
            self.phase_seconds["publish"] += time.time() - tp
        every = cfg.eval.every
        if every and version % every == 0 and version < cfg.train.steps and cfg.eval.deferred:
            te = time.time()
            if self.engine.rank == 0:
                self.snapshots.append((version, te - self.t0, self._policy_copy()))
            self.phase_seconds["eval"] += time.time() - te  # on the step's path: not taken out
        elif every and version % every == 0 and version < cfg.train.steps:
            te = time.time()
            self.accuracy = evaluate(
                self.engine, self.tokenizer, self.eval_rows, cfg, hub, stats, self.env
            )
            self.phase_seconds["eval"] += time.time() - te
            # Learning-per-second curves take the evaluations' own time out of wall time.
            stats["eval_seconds"] = time.time() - te
            if hub is not None:
                hub.metrics.step_seconds.labels(phase="eval").observe(time.time() - te)
        tc = time.time()
        if cfg.train.checkpoint_every and version % cfg.train.checkpoint_every == 0:
            self.checkpointer.save(hub, version)
        if self.reporter is not None:
            self.reporter.step(version, {**stats, **m})
        self.phase_seconds["checkpoint_report"] += time.time() - tc

    def _policy_copy(self) -> dict:
        """The policy's weights, copied to CPU memory (eval.deferred)."""
        state = self.engine.model.state_dict()
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def evaluate_deferred(self) -> None:
        """eval.deferred: each policy copy evaluated and recorded at its step (with the loop's
        seconds when it was taken), then the final weights put back."""
        if not self.snapshots:
            return
        model = self.engine.model
        final = self._policy_copy()
        try:
            for version, seconds, state in self.snapshots:
                model.load_state_dict(state)
                stats: dict = {"rl_elapsed_seconds": seconds}
                evaluate(
                    self.engine, self.tokenizer, self.eval_rows, self.cfg, None, stats, self.env
                )
                if self.reporter is not None:
                    self.reporter.record(version, stats)
        finally:
            model.load_state_dict(final)
            self.snapshots = []

    def summary(
        self, accuracy_before: float | None, accuracy_after: float | None, extra=None
    ) -> dict:
        """Rank 0: the run's figures (and `extra` ones), also written to
        `learner.output_dir/summary.json`."""
        cfg, st = self.cfg, self.hub.stats()
        rl = max(self.rl_seconds, 1e-9)
        summary = {
            "event": "summary",
            "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after,
            "rl_seconds": round(self.rl_seconds, 2),
            # Epoch seconds: other processes' timelines are clipped to the loop with them.
            "rl_started_at": round(self.t0, 3),
            "rl_ended_at": round(self.t0 + self.rl_seconds, 3),
            # The loop's seconds before any generator had joined: the fleet's start-up.
            "fleet_wait_seconds": round(
                max(0.0, (st["first_generator_joined_at"] or self.t0) - self.t0), 3
            ),
            "steps": self.version - self.start_version,
            "policy_version": self.version,
            "max_staleness": cfg.buffer.max_staleness,
            "max_staleness_seen": st["staleness_seen_max"],
            "trained_tokens_per_second": round(self.tokens_trained / rl, 1),
            "generators_seen": st["generators_seen"],
            "training_tokens_per_second": round(
                self.tokens_trained / max(self.busy_seconds, 1e-9), 1
            ),
            "generation_tokens_per_second": round(st["generation_capacity"], 1),
            "staleness_counts": {str(k): v for k, v in sorted(st["staleness_counts"].items())},
            "phase_seconds": {k: round(v, 4) for k, v in self.phase_seconds.items()},
            # The first step's wait: the pipeline filling, which a longer run amortises.
            "first_wait_seconds": round(self.first_wait_seconds, 4),
            "hub_cpu_seconds": round(st.get("hub_cpu_seconds", 0.0), 4),
            # This process's CPU during the loop: training thread, its other threads (the
            # hub's among them), its child processes (reward workers).
            "learner_cpu_seconds": self.cpu_seconds,
            **(extra or {}),
        }
        out = Path(cfg.learner.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        logger.info(
            "held-out accuracy %s -> %s in %.0fs RL (%d steps)",
            fmt_accuracy(accuracy_before),
            fmt_accuracy(accuracy_after),
            self.rl_seconds,
            self.version,
        )
        return summary


def available_memory() -> int | None:
    """Bytes of memory this host can still give (Linux's MemAvailable); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def deferred_copies_too_big(copy_bytes: int, copies: int, available: int | None) -> str | None:
    """Why eval.deferred's policy copies would not fit (more than half of the memory
    available at the start), or None."""
    need = copy_bytes * copies
    if available is None or need <= available // 2:
        return None
    return (
        f"eval.deferred would hold {copies} copies of the policy ({copy_bytes / 1e9:.2f} GB "
        f"each, {need / 1e9:.1f} GB) against {available / 1e9:.1f} GB of memory available: "
        "evaluate less often (eval.every) or inline (eval.deferred=false)"
    )


def fmt_accuracy(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
