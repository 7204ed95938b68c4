"""The settings an operator may change on a live run (`asyncrl ctl set`): one table, read by
the hub's `tuning` (which checks and applies them) and by the metrics (one gauge each).
Nothing else is tunable live."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tunable:
    """`name`: the dotted config field; `gauge`: its metric; `event`: the ledger event that
    applies it (None: read live from the config by whoever uses it, named in `applies`);
    `ceiling`: may not exceed the value the run started with (the rollout socket's frame
    limits and intake's length checks were sized from it)."""

    name: str
    gauge: str
    applies: str
    event: str | None = None
    ceiling: bool = False


TUNABLES: dict[str, Tunable] = {
    t.name: t
    for t in (
        Tunable(
            "buffer.max_staleness",
            "asyncrl_max_staleness",
            "gate: next lease; stale guard: next take",
            event="on_staleness_limit_changed",
        ),
        Tunable(
            "buffer.max_reuse", "asyncrl_max_reuse", "next take", event="on_reuse_limit_changed"
        ),
        Tunable("buffer.filter_zero_variance", "asyncrl_filter_zero_variance", "next group"),
        Tunable(
            "sampling.group_size",
            "asyncrl_sampling_group_size",
            "next lease",
            event="on_group_size_changed",
            ceiling=True,
        ),
        Tunable("sampling.temperature", "asyncrl_sampling_temperature", "next lease and step"),
        Tunable("sampling.top_p", "asyncrl_sampling_top_p", "next lease"),
        Tunable("sampling.top_k", "asyncrl_sampling_top_k", "next lease"),
        Tunable(
            "sampling.max_new_tokens", "asyncrl_sampling_max_new_tokens", "next lease", ceiling=True
        ),
        Tunable("sampling.stop", "asyncrl_sampling_stop_strings", "next lease"),
        Tunable("train.publish_every", "asyncrl_publish_every", "next step"),
        Tunable("train.lr_multiplier", "asyncrl_lr_multiplier", "next step"),
        Tunable("reward.weights", "asyncrl_reward_weight", "next group scored"),
    )
}
# Why a change (or a whole request, field "*") was refused: a bounded label set.
REFUSALS = ("unauthorized", "op", "syntax", "unknown", "not_tunable", "invalid", "ceiling")
