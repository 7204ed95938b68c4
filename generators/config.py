"""The `generator` section of the run configuration: what a generator process needs to know
beyond the model (the launch layer resolves that) and the security settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from asyncrl.generators.backends.sglang import SGLangConfig
from asyncrl.protocol.settings import StrictModel


class GeneratorConfig(StrictModel):
    """The `generator` section: one generator process, its backend and its learner."""

    metrics_host: str = Field(
        "0.0.0.0", description="Interface the /metrics endpoint binds (127.0.0.1 to keep it local)."
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
