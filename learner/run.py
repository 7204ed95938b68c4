"""The learner's one entry: build the engine (every rank) and the hub with its weight
publisher (rank 0), resume, publish version 0, run the step loop, save, export, summarise.

The caller (the launch layer) has parsed the config, installed the signal handlers that set
`stop`, resolved the device and the model and data paths, and serves metrics and emits
events through `Reporter`. Per-step statistics and the progress line are rank 0's
`learner.tracking.Tracking`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol

import torch

from asyncrl.learner.checkpoint import Checkpointer
from asyncrl.learner.config import RunConfig
from asyncrl.learner.data import PromptSource, load_rows
from asyncrl.learner.dpo_step import rows_per_step
from asyncrl.learner.engine import Engine, init_distributed, shutdown_distributed
from asyncrl.learner.evaluation import EnvHooks
from asyncrl.learner.loop import StepLoop, evaluate, fmt_accuracy
from asyncrl.learner.loop_defaults import loop_warnings
from asyncrl.learner.publishers import make_publisher
from asyncrl.learner.step import load_reference
from asyncrl.learner.tracking import Tracking, check_trackers, make_trackers

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    """How rank 0 tells the outside about the run."""

    def serve(self, hub) -> None:
        """The hub exists (not serving yet): expose its metrics and health."""

    def ready(self, event: dict) -> None:
        """Serving, version published, evaluated: endpoints, accuracy_before,
        policy_version, resumed, gate (as restored, before any lease of this lifetime)."""

    def finished(self, summary: dict) -> None:
        """The run's summary (`StepLoop.summary`), once the last checkpoint and export are
        written."""


def run_learner(
    cfg: RunConfig,
    model_path: str,
    train_path: str,
    eval_path: str | None,
    device: str,
    stop: threading.Event,
    resume: bool,
    reporter: Reporter,
    env: EnvHooks | None = None,
) -> dict | None:
    """Train until `train.steps`, `stop` or `train.max_seconds`; returns the summary on rank 0
    (None on other ranks). Joins the process group if the caller has not. `env`: multi-turn
    rollouts (tool schemas for prompts, episode evaluation), from the launch layer."""
    from transformers import AutoTokenizer

    rank, world = init_distributed(device)
    if rank == 0:
        for line in loop_warnings(cfg.objective, cfg.train):
            logger.warning(line)
    # A configured tracker that cannot run is a config error: say so before any model loads,
    # on every rank (one rank failing alone would leave the others waiting in a collective).
    check_trackers(cfg.learner.report_to)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed + rank)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    sequences = cfg.train.groups_per_step * cfg.sampling.group_size
    if cfg.objective.name == "dpo":
        sequences = rows_per_step(cfg.objective, cfg.train.groups_per_step, cfg.sampling.group_size)
    per_step = -(-sequences // cfg.train.mini_batches)
    ref_model = None
    if cfg.objective.needs_reference or cfg.advantage.kl_in_reward:
        # Before the engines: under ZeRO-3 their DeepSpeed config would partition the reference.
        ref_model = load_reference(model_path, cfg.model.dtype, device)
    engine = Engine(model_path, cfg.train, cfg.model.dtype, device, rank, world, per_step)
    critic = None
    if cfg.advantage.name == "gae":
        from asyncrl.learner.critic import Critic

        critic = Critic(
            cfg.critic,
            cfg.advantage,
            cfg.train,
            model_path,
            cfg.model.dtype,
            device,
            rank,
            world,
            per_step,
        )
    hub = _build_hub(cfg, train_path, tokenizer, env) if rank == 0 else None
    # Before the hub serves: a transport may attach itself to it.
    publisher = make_publisher(engine, hub, cfg.learner, model_path)
    eval_rows: list[dict] = []
    if eval_path and (rank == 0 or cfg.train.zero_stage == 3):
        eval_rows = load_rows(eval_path)[: cfg.data.eval_size]
    if hub is not None:
        reporter.serve(hub)

    train = cfg.train
    checkpointer = Checkpointer(
        engine,
        tokenizer,
        cfg.learner.output_dir,
        train.keep_checkpoints,
        train.export_checkpoints,
        critic=critic.engine if critic is not None else None,
    )
    version = checkpointer.restore(hub) if resume else 0
    restored = None
    if hub is not None:
        st = hub.stats()
        restored = {k: st[k] for k in ("accepted", "in_flight", "waiting", "consumed")}
        if cfg.learner.audit_log:
            from asyncrl.learner.audit import AuditLog

            audit_path = Path(cfg.learner.output_dir) / "audit.jsonl"
            hub.attach_audit(AuditLog(audit_path, version if resume else None))
        # Serve only now: a lease issued before the checkpoint's gate counters and version
        # are restored would be counted against the wrong state.
        hub.start()
    publisher.publish(version)
    before: dict = {}
    acc_before = evaluate(engine, tokenizer, eval_rows, cfg, hub, before, env)
    if hub is not None:
        if acc_before is not None:
            hub.metrics.eval_accuracy.set(acc_before)
        reporter.ready(
            {
                "endpoints": hub.endpoints,
                "accuracy_before": acc_before,
                "policy_version": version,
                "resumed": resume,
                "gate": restored,
            }
        )
        logger.info("held-out accuracy before RL: %s", fmt_accuracy(acc_before))

    tracking = _build_tracking(cfg, hub, version if resume else None) if hub is not None else None
    try:
        if tracking is not None:
            tracking.start(version, before)
        loop = StepLoop(
            cfg,
            engine,
            hub,
            publisher,
            tokenizer,
            eval_rows,
            ref_model,
            stop,
            version,
            acc_before,
            checkpointer,
            reporter=tracking,
            env=env,
            critic=critic,
        )
        loop.run()
        if hub is not None and not stop.is_set():
            # The run reached its end (not a stop signal, whose learner is to be resumed):
            # generators are told while the checkpoint and export are written.
            hub.loop.finish(loop.version)
        if not stop.is_set():  # a stop signal wants a prompt exit, not evaluations
            loop.evaluate_deferred()
        checkpointer.save(hub, loop.version)
        if hub is not None:
            hub.close_audit(finished=True)
        checkpointer.final_export(loop.version)
        final: dict = {}
        acc_after = evaluate(engine, tokenizer, eval_rows, cfg, hub, final, env)
        if tracking is not None:
            tracking.record(loop.version, final)
    finally:
        if tracking is not None:
            tracking.close()
    summary = None
    if hub is not None:
        if acc_after is not None:
            hub.metrics.eval_accuracy.set(acc_after)
        extra = {}
        if "eval_tool_call_success" in before:
            # Multi-turn episodes: how often the held-out episodes' tool calls succeeded.
            extra["tool_call_success_before"] = before["eval_tool_call_success"]
            extra["tool_call_success_after"] = final.get("eval_tool_call_success")
        summary = loop.summary(acc_before, acc_after, extra)
        hub.stop()
        publisher.close()
        reporter.finished(summary)
    if world > 1:
        torch.distributed.barrier()
    shutdown_distributed()
    return summary


def _build_tracking(cfg: RunConfig, hub, resumed_from: int | None) -> Tracking:
    lc = cfg.learner
    dump = getattr(cfg, "model_dump", None)
    config = dump(mode="json") if dump is not None else {}
    trackers = make_trackers(lc.report_to, lc.output_dir, lc.wandb_project, config, resumed_from)
    train = cfg.train
    return Tracking(trackers, hub.metrics, train.steps, train.log_every, train.max_seconds, hub)


def _build_hub(cfg: RunConfig, train_path: str, tokenizer, env: EnvHooks | None):
    from asyncrl.learner.hub import Hub
    from asyncrl.learner.hub.core import RateLimitedLog
    from asyncrl.learner.hub.keep import lease_samples
    from asyncrl.learner.metrics import LearnerMetrics
    from asyncrl.protocol.sockets import (
        learner_receive_limits,
        operator_keys,
        setup_socket_factory,
    )

    rows = load_rows(train_path)
    if cfg.data.test_time:
        rows = rows[: cfg.data.eval_size]  # exactly the prompts evaluation scores
    prompts = PromptSource(
        rows,
        tokenizer,
        cfg.data.prompt_field,
        seed=cfg.data.shuffle_seed,
        tools=env.tools if env is not None else None,
    )
    # Per-frame limits from the configured maxima, not a fixed 512 MiB.
    receive = learner_receive_limits(lease_samples(cfg), cfg.sampling.max_new_tokens)
    metrics = LearnerMetrics()
    denied_log = RateLimitedLog()

    def auth_denied(reason: str) -> None:
        metrics.auth_failures.labels(reason=reason).inc()
        denied_log.warning("auth", "refused a CURVE client (%s)", reason)

    factory = setup_socket_factory(cfg.security, "server", receive, auth_denied)
    operators = operator_keys(cfg.security.curve_dir)
    return Hub(cfg, prompts, tokenizer, metrics, factory, operators)
