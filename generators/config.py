"""The `generator` section of the run configuration: what a generator process needs to know
beyond the model (the launch layer resolves that) and the security settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from asyncrl.generators.backends.sglang import SGLangConfig
from asyncrl.protocol.settings import MetricsHttpSettings, StrictModel


class LearnerLimits(StrictModel):
    """What a generator accepts from its learner. The learner is trusted to train, not to size
    this process's memory or choose its files: on a network without CURVE anyone can claim to
    be it."""

    max_model_bytes: int = Field(
        0,
        ge=0,
        description="Largest weights blob accepted (announced size); 0 = this host's physical "
        "memory.",
    )
    weights_dir: str = Field(
        "",
        description="Disk transport: announced version directories must lie under this "
        "directory (no `..`). Empty: learner.weights.dir of the same config when the disk "
        "transport is configured, else disk paths are refused (chunks are fetched instead).",
    )
    max_group_size: int = Field(1024, ge=1, description="Largest lease group size accepted.")
    max_new_tokens: int = Field(
        131072, ge=1, description="Largest max_new_tokens accepted in a lease."
    )
    max_prompt_tokens: int = Field(
        1 << 20, ge=1, description="Longest prompt (tokens) accepted in a lease."
    )


class GeneratorConfig(MetricsHttpSettings):
    """The `generator` section: one generator process, its backend and its learner."""

    metrics_host: str = Field(
        "127.0.0.1",
        description="Interface /metrics and /healthz bind (0.0.0.0 to scrape from another host; "
        "then consider metrics_auth_file and TLS).",
    )
    metrics_linger_seconds: float = Field(
        30.0,
        ge=0,
        description="After the learner announced the run finished, keep serving /metrics this "
        "long (asyncrl_run_finished = 1) before exiting 0; at least one scrape interval. "
        "SIGTERM ends it early.",
    )
    backend: Literal["hf", "sglang"] = Field("hf", description="Inference engine.")
    sglang: SGLangConfig = Field(
        default_factory=SGLangConfig,
        description="SGLang server settings (backend sglang): attach by URL or launch one.",
    )
    learner: str = Field("tcp://127.0.0.1:5555", description="The learner's control address.")
    generator_id: str = Field("", description="Stable id (metrics label); empty = host-pid.")
    metrics_port: int = Field(
        9401, ge=0, le=65535, description="Prometheus /metrics port; 0 = any free port."
    )
    threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = torch's default.")
    seed: int = Field(0, description="Sampling seed (combined with the generator id).")
    inflight_updates: Literal["off", "continue", "reprefill"] = Field(
        "continue",
        description="Load newly published weights in the middle of a generation (hf backend): "
        "continue = keep the KV cache of earlier tokens, reprefill = recompute it with the new "
        "weights; tokens carry the version that sampled them either way. off = only between "
        "groups.",
    )
    inflight_check_tokens: int = Field(
        8, ge=1, description="Decode steps between checks for new weights (in-flight updates)."
    )
    reconnect_seconds: float = Field(
        10.0,
        gt=0,
        description="A learner silent this long is considered gone; the "
        "generator rebuilds its sockets with backoff.",
    )
    prefetch_lease: bool = Field(
        True,
        description="Ask for the next lease while generating the current group, so the round "
        "trip to the learner is hidden. Skipped while a group takes more than a quarter of the "
        "lease duration (a prefetched lease is not heartbeated until it is read).",
    )
    groups_per_batch: int = Field(
        4,
        ge=1,
        le=256,
        description="Leases a generator takes and generates at once (requested together, one "
        "round trip). Backends that batch groups (hf) sample them in one batch: on a small or "
        "CPU model the per-pass overhead, not the arithmetic, is what a group costs. Each "
        "lease still carries one group; the staleness gate counts every one in flight.",
    )
    phases_path: str = Field(
        "",
        description="Write this generator's wall time by phase (generate, weights, lease, "
        "gate, push, other; seconds, JSON) to this file when it exits; empty = not written. "
        "`asyncrl local` sets it per generator in the run's output directory; `asyncrl bench` "
        "reads it for its loss breakdown.",
    )
    limits: LearnerLimits = Field(
        default_factory=LearnerLimits,
        description="Bounds on what the learner sends (sizes, paths, group sizes): a message "
        "past them is dropped and counted, never acted on.",
    )
