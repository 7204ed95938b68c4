"""Prometheus metrics of the learner process (training loop, hub, buffer and gate).

One registry per process (each role serves its own port), so no multiprocess mode. Names follow
DESIGN.md: `asyncrl_` prefix, base units, `_total` only on counters, bounded label values.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from asyncrl.learner.tunables import REFUSALS as TUNE_REFUSALS
from asyncrl.learner.tunables import TUNABLES
from asyncrl.protocol.codec import DECODE_REASONS
from asyncrl.protocol.validate import ROLLOUT_REASONS

logger = logging.getLogger(__name__)

DROP_REASONS = (
    "stale",
    "overflow",
    "filtered",
    # kept for dashboards of earlier releases; nothing drops for it any more
    "invalid",
    "duplicate",
    "expired",
    "unknown_lease",
    "wrong_holder",
    "reward_timeout",
    "reward_error",  # the reward raised, or no function scored the group (reward_errors)
    *ROLLOUT_REASONS,
)
# Why a message was dropped before reaching a handler: the codec's and the socket's reasons,
# a message of a type the socket does not take, and `internal` for whatever a handler raised.
MALFORMED_REASONS = (*DECODE_REASONS, "unexpected_type", "internal")
# ZeroMQ socket-monitor events of the hub's receiving sockets: a peer's connection closed
# (ZeroMQ also closes it for a frame over ZMQ_MAXMSGSIZE: the monitor cannot tell which), or
# its handshake failed (protocol mismatch, or CURVE authentication).
DISCONNECT_REASONS = ("disconnected", "handshake", "auth")
AUTH_FAILURE_REASONS = ("unknown_key",)  # protocol.auth
DENY_REASONS = ("gate", "version", "hello")
# schema: the generator speaks another wire schema; operator_key: an `asyncrl ctl` key may
# tune the run, never generate for it.
HELLO_REFUSALS = ("schema", "operator_key")
# Sessions forgotten to make room for a hello (`asyncrl_sessions_evicted_total{bound}`): past the
# sessions one IP address may hold, or past the hub's total.
EVICTION_BOUNDS = ("source_limit", "limit")
# Lease messages refused (`asyncrl_lease_messages_refused_total{message, reason}`): a request from
# a connection that never said hello, ids held by another connection, ids never issued.
LEASE_MESSAGES = ("lease_request", "heartbeat", "lease_return")
LEASE_REFUSALS = ("no_hello", "wrong_holder", "unknown_lease")
# Weight chunk (and nccl join/pull) requests not served
# (`asyncrl_weight_requests_refused_total{reason}`): from a connection that never said hello,
# past the per-connection cap of outstanding chunks, or the reply could not be queued (the
# peer's queue is full or it left).
WEIGHT_REFUSALS = ("no_hello", "peer_cap", "not_sent")
PHASES = ("wait", "logprob", "update", "publish", "eval")
STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 16)


class LearnerMetrics:
    """All learner-side series, created on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = registry or CollectorRegistry()
        self.registry = r
        self.policy_version = Gauge(
            "asyncrl_policy_version", "Optimizer steps completed by the learner.", registry=r
        )
        self.steps = Counter(
            "asyncrl_learner_steps", "Optimizer steps taken since this process started.", registry=r
        )
        self.step_seconds = Histogram(
            "asyncrl_learner_step_seconds",
            "Learner time per step by phase.",
            ["phase"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.tokens = Counter("asyncrl_learner_tokens", "Response tokens trained on.", registry=r)
        self.loss = Gauge("asyncrl_loss", "Policy loss of the last step.", registry=r)
        self.clip_fraction = Gauge(
            "asyncrl_clip_fraction", "Fraction of tokens clipped in the last step.", registry=r
        )
        self.is_weight_max = Gauge(
            "asyncrl_importance_weight_max",
            "Largest importance weight in the last step.",
            registry=r,
        )
        self.kl = Gauge("asyncrl_kl", "KL to the reference policy (last step).", registry=r)
        self.entropy = Gauge(
            "asyncrl_entropy", "Mean token entropy of the policy (last step), nats.", registry=r
        )
        self.grad_norm = Gauge(
            "asyncrl_grad_norm", "Gradient norm before clipping (last step).", registry=r
        )
        self.reward_mean = Gauge(
            "asyncrl_reward_mean", "Mean reward of the groups in the last step.", registry=r
        )
        # advantage.name=gae: the learned critic (learner.critic)
        self.value_loss = Gauge(
            "asyncrl_value_loss", "Critic's clipped value loss (last step).", registry=r
        )
        self.value_explained_variance = Gauge(
            "asyncrl_value_explained_variance",
            "1 - Var(returns - values) / Var(returns) over the last batch's response tokens, "
            "values from the critic before its update.",
            registry=r,
        )
        self.value_mean = Gauge(
            "asyncrl_value_mean", "Mean critic value over response tokens (last step).", registry=r
        )
        self.value_std = Gauge(
            "asyncrl_value_std",
            "Std of critic values over response tokens (last step).",
            registry=r,
        )
        self.value_clip_fraction = Gauge(
            "asyncrl_value_clip_fraction",
            "Fraction of response tokens whose clipped value term was the larger (last step).",
            registry=r,
        )
        self.eval_accuracy = Gauge(
            "asyncrl_eval_accuracy",
            "Held-out accuracy at the last evaluation: fraction of completions of labelled rows "
            "whose reward reaches eval.success_threshold.",
            registry=r,
        )
        self.eval_reward_mean = Gauge(
            "asyncrl_eval_reward_mean",
            "Mean reward (reward.functions) of held-out completions at the last evaluation.",
            registry=r,
        )
        self.eval_pass_at_k = Gauge(
            "asyncrl_eval_pass_at_k",
            "Held-out pass@k (k = eval.samples) at the last evaluation.",
            registry=r,
        )
        self.eval_maj_at_k = Gauge(
            "asyncrl_eval_maj_at_k",
            "Held-out maj@k (k = eval.samples > 1) at the last evaluation: fraction of labelled "
            "rows whose majority answer is the label.",
            registry=r,
        )
        # TTRL (reward ttrl): what explains whether label-free rewards work.
        self.ttrl_majority_frac = Gauge(
            "asyncrl_ttrl_majority_frac",
            "TTRL majority ratio of the last step's groups: share of the voted samples that "
            "agree with the pseudo label.",
            registry=r,
        )
        self.ttrl_label_accuracy = Gauge(
            "asyncrl_ttrl_label_accuracy",
            "TTRL pseudo-label accuracy of the last step's groups (maj@N of the voted "
            "samples; rows with a label, withheld at test time, only).",
            registry=r,
        )
        self.ttrl_reward_accuracy = Gauge(
            "asyncrl_ttrl_reward_accuracy",
            "TTRL reward accuracy of the last step's groups: share of samples whose pseudo "
            "reward equals the reward the label gives.",
            registry=r,
        )
        self.samples_unkept = Counter(
            "asyncrl_rollout_samples_unkept",
            "Samples of scored groups voted on (reward.ttrl.vote_size) but not kept for training.",
            registry=r,
        )
        self.publish_seconds = Histogram(
            "asyncrl_weight_publish_seconds",
            "Time to gather, serialise and announce weights.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.weight_bytes = Counter(
            "asyncrl_weight_bytes",
            "Bytes of weights published (per version, not per fetch).",
            registry=r,
        )
        self.weight_bytes_served = Counter(
            "asyncrl_weight_bytes_served",
            "Bytes of weights sent to generators (chunks and NCCL broadcasts).",
            registry=r,
        )
        self.weight_requests_refused = Counter(
            "asyncrl_weight_requests_refused",
            "Weight chunk and nccl requests not served, by reason.",
            ["reason"],
            registry=r,
        )
        self.weight_broadcast_seconds = Histogram(
            "asyncrl_weight_broadcast_seconds",
            "NCCL transport: time to broadcast one version into one generator's group.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.weight_broadcast_failures = Counter(
            "asyncrl_weight_broadcast_failures",
            "NCCL transport: groups that failed to form or broke mid-broadcast.",
            registry=r,
        )
        self.generators_connected = Gauge(
            "asyncrl_generators_connected", "Generators that sent a heartbeat recently.", registry=r
        )
        self.generators_up_to_date = Gauge(
            "asyncrl_generators_up_to_date",
            "Connected generators holding the latest published weights.",
            registry=r,
        )
        # buffer and gate
        self.buffer_groups = Gauge(
            "asyncrl_buffer_groups", "Groups waiting in the replay buffer.", registry=r
        )
        self.buffer_bytes = Gauge(
            "asyncrl_buffer_bytes", "Bytes held by the replay buffer.", registry=r
        )
        self.received = Counter(
            "asyncrl_rollouts_received", "Rollout groups received from generators.", registry=r
        )
        self.dropped = Counter(
            "asyncrl_rollouts_dropped", "Rollout groups dropped, by reason.", ["reason"], registry=r
        )
        self.staleness = Histogram(
            "asyncrl_staleness",
            "Staleness (learner version minus rollout version) of consumed groups.",
            buckets=STALENESS_BUCKETS,
            registry=r,
        )
        self.leases_in_flight = Gauge(
            "asyncrl_leases_in_flight", "Leases issued and not yet returned.", registry=r
        )
        self.leases_issued = Counter("asyncrl_leases_issued", "Leases issued.", registry=r)
        self.leases_expired = Counter(
            "asyncrl_leases_expired",
            "Leases reclaimed after their deadline or generator loss.",
            registry=r,
        )
        self.leases_denied = Counter(
            "asyncrl_leases_denied", "Lease requests refused, by reason.", ["reason"], registry=r
        )
        self.lease_messages_refused = Counter(
            "asyncrl_lease_messages_refused",
            "Lease requests, heartbeats and lease returns refused (per lease id), by reason.",
            ["message", "reason"],
            registry=r,
        )
        # Live tuning (`asyncrl ctl`, learner.hub.tuning): a gauge per tunable, its changes.
        self.tunables: dict[str, Gauge] = {}
        for t in TUNABLES.values():
            labels = ["function"] if t.name == "reward.weights" else []
            what = "number of strings" if t.name == "sampling.stop" else "live value"
            self.tunables[t.name] = Gauge(t.gauge, f"The {what} of {t.name}.", labels, registry=r)
        self.max_staleness = self.tunables["buffer.max_staleness"]
        self.config_changes = Counter(
            "asyncrl_config_changes",
            "Live configuration changes applied (asyncrl ctl set), by field.",
            ["field"],
            registry=r,
        )
        self.config_refused = Counter(
            "asyncrl_config_changes_refused",
            "Live configuration changes, or whole asyncrl ctl requests, refused, by reason.",
            ["reason"],
            registry=r,
        )
        for name in TUNABLES:
            self.config_changes.labels(field=name)
        self.reward_errors = Counter(
            "asyncrl_reward_errors",
            "Groups whose reward raised or whose reward worker died (dropped as invalid).",
            registry=r,
        )
        self.malformed = Counter(
            "asyncrl_malformed_messages",
            "Messages dropped before a handler took them, by reason.",
            ["reason"],
            registry=r,
        )
        self.control_received = Counter(
            "asyncrl_control_messages_received",
            "Well-formed messages of a control type received on the control socket.",
            registry=r,
        )
        self.peer_disconnects = Counter(
            "asyncrl_peer_disconnects",
            "Connections to the control and rollouts sockets that ended or failed to start.",
            ["reason"],
            registry=r,
        )
        self.auth_failures = Counter(
            "asyncrl_auth_failures",
            "CurveZMQ clients refused by the learner's authenticator, by reason.",
            ["reason"],
            registry=r,
        )
        self.hellos_refused = Counter(
            "asyncrl_hellos_refused",
            "Generators refused at hello, by reason (schema: another wire schema; operator_key: "
            "an operator's key, which may only tune).",
            ["reason"],
            registry=r,
        )
        self.sessions_evicted = Counter(
            "asyncrl_sessions_evicted",
            "Generator sessions forgotten to make room for a hello, by bound (source_limit: "
            "the most one IP address may hold; limit: the hub's total); their leases expire "
            "and are re-issued.",
            ["bound"],
            registry=r,
        )
        for bound in EVICTION_BOUNDS:
            self.sessions_evicted.labels(bound=bound)
        # Every label of every labelled counter exists from the start, so dashboards and rate()
        # show 0 instead of no data.
        for counter, reasons in (
            (self.dropped, DROP_REASONS),
            (self.malformed, MALFORMED_REASONS),
            (self.peer_disconnects, DISCONNECT_REASONS),
            (self.leases_denied, DENY_REASONS),
            (self.auth_failures, AUTH_FAILURE_REASONS),
            (self.hellos_refused, HELLO_REFUSALS),
            (self.config_refused, TUNE_REFUSALS),
            (self.weight_requests_refused, WEIGHT_REFUSALS),
        ):
            for reason in reasons:
                counter.labels(reason=reason)
        for message in LEASE_MESSAGES:
            for reason in LEASE_REFUSALS:
                self.lease_messages_refused.labels(message=message, reason=reason)
        self.stats_dropped = Counter(
            "asyncrl_stats_dropped",
            "Per-step statistic names not exported: past the name limit, unusable, or taken "
            "by another series.",
            registry=r,
        )
        self.stats = StatGauges(
            r,
            self.stats_dropped,
            {
                "loss": self.loss,
                "clip_fraction": self.clip_fraction,
                "is_weight_max": self.is_weight_max,
                "kl": self.kl,
                "entropy": self.entropy,
                "grad_norm": self.grad_norm,
                "reward_mean": self.reward_mean,
                "value_loss": self.value_loss,
                "value_explained_variance": self.value_explained_variance,
                "value_mean": self.value_mean,
                "value_std": self.value_std,
                "value_clip_fraction": self.value_clip_fraction,
                "eval_accuracy": self.eval_accuracy,
                "eval_reward_mean": self.eval_reward_mean,
                "eval_pass_at_k": self.eval_pass_at_k,
                "eval_maj_at_k": self.eval_maj_at_k,
                "ttrl_majority_frac": self.ttrl_majority_frac,
                "ttrl_label_accuracy": self.ttrl_label_accuracy,
                "ttrl_reward_accuracy": self.ttrl_reward_accuracy,
            },
        )
        for phase in PHASES:
            self.step_seconds.labels(phase=phase)


# --------------------------------------------------------------- per-step statistics
class StatGauges:
    """One gauge per per-step statistic, `asyncrl_<name>`, set to its last value. The series
    documented by name (asyncrl_loss, asyncrl_importance_weight_max, ...) are reused through
    `aliases`; the others are created the first time their name is reported. Names arrive
    already cleaned and bounded in number (`learner.tracking.base.StatNames`)."""

    def __init__(self, registry: CollectorRegistry, dropped: Counter, aliases: dict[str, Gauge]):
        self._registry = registry
        self._dropped = dropped
        self._gauges: dict[str, Gauge | None] = dict(aliases)

    def set(self, stats: dict[str, float]) -> None:
        for name, value in stats.items():
            gauge = self._gauges.get(name, ...)
            if gauge is ...:
                gauge = self._gauges[name] = self._create(name)
            if gauge is not None:
                gauge.set(value)

    def _create(self, name: str) -> Gauge | None:
        try:
            return Gauge(
                f"asyncrl_{name}",
                f"Per-step statistic {name} (last step).",
                registry=self._registry,
            )
        except ValueError:
            # The name belongs to another series of this registry (a counter, a histogram):
            # that series stays what it is; this statistic reaches the trackers only.
            logger.warning("statistic %r not exported to Prometheus: the name is taken", name)
            self._dropped.inc()
            return None
