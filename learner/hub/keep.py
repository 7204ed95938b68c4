"""TTRL's vote/keep split (arXiv 2504.16084): a lease asks for N samples, the reward votes over
all N, and the group that enters the buffer keeps G of them (`sampling.group_size`).

The group is still one group: one lease, one gate slot, one buffer entry, one staleness (the
oldest token of the N, never younger than the kept ones). Only its samples are fewer.
"""

from __future__ import annotations

import numpy as np

from asyncrl.learner.config import RunConfig


def lease_samples(cfg: RunConfig) -> int:
    """Samples a lease asks for (and intake validates): N when TTRL votes over more than it
    trains on, else G."""
    return cfg.reward.ttrl.vote_size or cfg.sampling.group_size


def keep_rng(seed: int, lease_id: str) -> np.random.Generator:
    """The draw of one group: a function of the run's seed and the lease (ids are random hex),
    so reward-pool threads need no shared generator."""
    return np.random.default_rng([seed, int(lease_id[:16], 16) if lease_id else 0])


def keep_indices(
    n: int,
    g: int,
    mode: str,
    rng: np.random.Generator,
    strata: list[int] | None = None,
) -> list[int]:
    """Which `g` of `n` samples are trained on, in ascending order.

    random: uniform without replacement. stratified: `strata[i]` names sample i's answer
    (equal ids = one answer); answer c with n_c samples keeps floor(g·n_c/n), and the samples
    still missing go one each to the answers with the largest remainders (ties: the larger
    answer, then the one seen first), then samples of each answer are drawn uniformly. Without
    strata, stratified is random.
    """
    if not 0 < g <= n:
        raise ValueError(f"cannot keep {g} of {n} samples")
    if g == n:
        return list(range(n))
    if mode == "random" or strata is None:
        return sorted(int(i) for i in rng.choice(n, size=g, replace=False))
    if mode != "stratified":
        raise ValueError(f"unknown keep mode {mode!r}")
    if len(strata) != n:
        raise ValueError(f"{len(strata)} strata for {n} samples")
    members: dict[int, list[int]] = {}
    for i, s in enumerate(strata):
        members.setdefault(s, []).append(i)
    clusters = list(members)  # first seen first
    quota = {c: g * len(members[c]) // n for c in clusters}
    # Remainder of g·n_c/n in units of 1/n: compare integers, no float ties.
    order = sorted(
        range(len(clusters)),
        key=lambda k: (-(g * len(members[clusters[k]]) % n), -len(members[clusters[k]]), k),
    )
    for k in order[: g - sum(quota.values())]:
        quota[clusters[k]] += 1
    kept: list[int] = []
    for c in clusters:
        if quota[c]:
            kept.extend(int(i) for i in rng.choice(members[c], size=quota[c], replace=False))
    return sorted(kept)
