"""Prometheus metrics of a generator process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from asyncrl.generators.phases import PHASES

# Why a message from the learner was dropped (`generators/bounds.py`).
REJECT_REASONS = (
    "malformed",  # did not decode (protocol.codec.ProtocolError)
    "welcome",
    "weights_size",
    "chunks",
    "chunk_bytes",
    "path",
    "group_size",
    "max_new_tokens",
    "prompt_length",
)

# How multi-turn episodes end (protocol.validate.FINISH_REASONS).
EPISODE_FINISHES = ("stop", "length", "abort", "max_turns", "budget", "tool_timeout")


class GeneratorMetrics:
    """All generator-side series, created on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = registry or CollectorRegistry()
        self.registry = r
        self.tokens = Counter("asyncrl_generator_tokens", "Response tokens generated.", registry=r)
        self.groups = Counter(
            "asyncrl_generator_groups", "Groups generated and pushed.", registry=r
        )
        self.policy_version = Gauge(
            "asyncrl_generator_policy_version", "Weights version this generator holds.", registry=r
        )
        self.weight_load_seconds = Histogram(
            "asyncrl_generator_weight_load_seconds",
            "Time to fetch, verify and load weights.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.gate_wait_seconds = Counter(
            "asyncrl_generator_gate_wait_seconds",
            "Time spent waiting because no lease was granted (staleness gate, version, dataset).",
            registry=r,
        )
        self.generate_seconds = Counter(
            "asyncrl_generator_generate_seconds", "Time spent generating.", registry=r
        )
        self.phase_seconds = Counter(
            "asyncrl_generator_phase_seconds",
            "Wall time of the generate loop by phase (generators/phases.py).",
            ["phase"],
            registry=r,
        )
        for phase in PHASES:
            self.phase_seconds.labels(phase=phase)
        self.reconnects = Counter(
            "asyncrl_generator_reconnects",
            "Times the connection to the learner was rebuilt.",
            registry=r,
        )
        self.inflight_updates = Counter(
            "asyncrl_generator_inflight_updates",
            "Weight versions loaded in the middle of a generation (later tokens carry them).",
            registry=r,
        )
        self.weight_errors = Counter(
            "asyncrl_generator_weight_errors",
            "Weight fetches that failed verification or went missing.",
            registry=r,
        )
        self.rejected = Counter(
            "asyncrl_generator_rejected_messages",
            "Messages from the learner dropped for exceeding this generator's limits.",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        # Multi-turn episodes (env.name != none); zero otherwise.
        self.episode_turns = Histogram(
            "asyncrl_generator_episode_turns",
            "Model turns per multi-turn episode.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.episodes = Counter(
            "asyncrl_generator_episodes",
            "Multi-turn episodes finished, by finish reason.",
            ["finish"],
            registry=r,
        )
        for reason in EPISODE_FINISHES:
            self.episodes.labels(finish=reason)
        self.tool_calls = Counter(
            "asyncrl_generator_tool_calls",
            "Tool calls by tool (configured names, unknown, malformed) and outcome "
            "(ok, error, timeout).",
            ["tool", "outcome"],
            registry=r,
        )
        self.env_seconds = Counter(
            "asyncrl_generator_env_seconds",
            "Time spent in environments (tool calls included) between model turns.",
            registry=r,
        )
        self.env_tokens = Counter(
            "asyncrl_generator_env_tokens",
            "Environment tokens appended to episodes (loss mask 0; the masked fraction is "
            "this over asyncrl_generator_tokens_total).",
            registry=r,
        )
