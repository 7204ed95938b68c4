"""TTRL as published: vote over N samples, keep G (random or stratified by answer), the
metrics that explain it (majority ratio, pseudo-label and reward accuracy, maj@k), ReMax's
greedy baseline scored against the group's majority, and the test-time and config rules.
Expected values are derived by hand in the comments."""

from __future__ import annotations

import queue
from collections import Counter

import numpy as np
import pytest

from asyncrl.launch.config import ConfigError, load_config
from asyncrl.learner.evaluation import score_rows
from asyncrl.learner.hub.keep import keep_indices, keep_rng
from asyncrl.learner.rewards import RewardConfig, RewardInput, setup_reward
from asyncrl.learner.rewards.config import eval_reward_config
from asyncrl.learner.rewards.pool import RewardJob, RewardPool, Scored
from asyncrl.learner.rewards.ttrl import vote


def _inp(completions: list[str], row: dict, withheld=None) -> RewardInput:
    return RewardInput(
        "q", "q", completions, [[7]] * len(completions), row, 0, withheld_label=withheld
    )


def _ttrl(inp: RewardInput):
    fn = setup_reward(RewardConfig(name="ttrl"))
    try:
        return fn(inp)
    finally:
        fn.close()


# ------------------------------------------------------------------ keep G of N
def test_keep_random_is_g_distinct_sorted_and_all_when_g_equals_n():
    kept = keep_indices(32, 8, "random", np.random.default_rng(0))
    assert len(kept) == 8 == len(set(kept)) and kept == sorted(kept)
    assert all(0 <= i < 32 for i in kept)
    assert keep_indices(8, 8, "random", np.random.default_rng(0)) == list(range(8))
    with pytest.raises(ValueError):
        keep_indices(4, 5, "random", np.random.default_rng(0))


def test_keep_stratified_hand_example():
    # n = 10 answers: A x5 (ids 0-4), B x3 (5-7), C x1 (8), none x1 (9); keep g = 4.
    # Quotas g*n_c/n: A 2.0 -> 2, B 1.2 -> 1, C 0.4 -> 0, none 0.4 -> 0; 3 given, 1 left.
    # Remainders (in 1/n): A 0, B 2, C 4, none 4: C and none tie at 4, both of size 1, C was
    # seen first -> C gets it. Kept: 2 of A, 1 of B, sample 8.
    strata = [0, 0, 0, 0, 0, 1, 1, 1, 2, -1]
    for seed in range(5):
        kept = keep_indices(10, 4, "stratified", np.random.default_rng(seed), strata)
        assert Counter(strata[i] for i in kept) == {0: 2, 1: 1, 2: 1}
        assert 8 in kept and kept == sorted(kept)


def test_keep_stratified_keeps_the_minority_random_may_not():
    # 31 votes for the majority, 1 dissenter (sample 31); keep 8. Stratified: quotas 7.75 -> 7
    # and 0.25 -> 0, one left, remainders (8*31 % 32 = 24, 8*1 % 32 = 8) -> the majority
    # gets it: 8 + 0. A dissenter with 4 of 32 votes: quotas exactly 7 and 1, kept every time.
    strata = [0] * 31 + [1]
    kept = keep_indices(32, 8, "stratified", np.random.default_rng(0), strata)
    assert 31 not in kept
    strata = [0] * 28 + [1] * 4
    for seed in range(5):
        kept = keep_indices(32, 8, "stratified", np.random.default_rng(seed), strata)
        assert sum(i >= 28 for i in kept) == 1


def test_keep_rng_is_a_function_of_seed_and_lease():
    a = keep_indices(32, 8, "random", keep_rng(0, "ab" * 16))
    assert a == keep_indices(32, 8, "random", keep_rng(0, "ab" * 16))
    assert a != keep_indices(32, 8, "random", keep_rng(1, "ab" * 16))


# ------------------------------------------------------------------ the vote's metrics
def test_vote_clusters_and_majority():
    # Extracted answers: "7" and "7.0" are one answer (cluster 0), "8" is cluster 1, no
    # answer (None) -> -1.
    assert vote(["7", "8", None, "7.0"]) == ("7", [0, 1, -1, 0])
    assert vote(["x y", None]) == ("x y", [0, -1])
    assert vote([None, None]) == (None, [-1, -1])


def test_majority_ratio_label_and_reward_accuracy_hand_example():
    # 8 voters: 12 x4, 13 x3, none x1 -> pseudo label 12, rewards 1 for the four 12s.
    # majority ratio 4/8 = 0.5. Truth 13: the label is wrong -> label accuracy 0. True rewards
    # would be 1 for the three 13s: pseudo and true agree on the no-answer sample only
    # (0 = 0) -> reward accuracy 1/8.
    comps = ["12", "13", "12", "13", "12", "13", "12", "?"]
    res = _ttrl(_inp(comps, {"answer": "13"}))
    assert res.rewards == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert res.clusters == [0, 1, 0, 1, 0, 1, 0, -1]
    assert res.metrics["ttrl_majority_frac"] == 0.5
    assert res.metrics["ttrl_label_accuracy"] == 0.0
    assert res.metrics["ttrl_reward_accuracy"] == pytest.approx(1 / 8)
    # Test time: the row carries no label, the withheld one feeds the metrics (truth 12:
    # label right; pseudo = true everywhere -> reward accuracy 1), the rewards are the same.
    res = _ttrl(_inp(comps, {}, withheld="12"))
    assert res.rewards[:2] == [1.0, 0.0]
    assert res.metrics["ttrl_label_accuracy"] == 1.0
    assert res.metrics["ttrl_reward_accuracy"] == 1.0
    # No label anywhere: no label metrics.
    assert "ttrl_label_accuracy" not in _ttrl(_inp(comps, {})).metrics


def test_eval_maj_at_k_hand_example():
    # Two labelled rows of 3 samples, scored by exact: row 1 (answer 5): 5, 5, 6 -> majority
    # 5 right; row 2 (answer 9): 8, 8, 9 -> majority 8 wrong. maj@3 = 1/2; accuracy
    # (solved samples) = (2 + 1) / 6 = 0.5; pass@3 = 1 for both.
    fn = setup_reward(RewardConfig(name="exact"))
    try:
        out = score_rows(
            fn,
            [{"prompt": "a", "answer": 5}, {"prompt": "b", "answer": 9}],
            ["a", "b"],
            [[("5", [1]), ("5", [1]), ("6", [1])], [("8", [1]), ("8", [1]), ("9", [1])]],
            prompt_field="prompt",
            answer_field="answer",
            success_threshold=1.0,
        )
    finally:
        fn.close()
    assert out["eval_maj_at_k"] == 0.5 and out["eval_accuracy"] == 0.5
    assert out["eval_pass_at_k"] == 1.0


# ------------------------------------------------------------------ ReMax with TTRL
def test_remax_baseline_is_scored_against_the_groups_majority():
    # Group 5, 5, 6: pseudo label 5. Baseline 6 disagrees -> 0 (alone it would be its own
    # majority, 1); baseline 5 agrees -> 1. With exact weighted 0.5 beside ttrl (answer 6):
    # baseline 6 -> 0 (ttrl) + 0.5 * 1 (exact alone) = 0.5.
    inp = _inp(["5", "5", "6"], {"answer": "6"})
    fn = setup_reward(RewardConfig(name="ttrl"))
    try:
        assert fn.score_baseline(inp, "6", [1]) == 0.0
        assert fn.score_baseline(inp, "5", [1]) == 1.0
        assert fn(_inp(["6"], {})).rewards == [1.0]  # what scoring it alone gave
    finally:
        fn.close()
    fn = setup_reward(RewardConfig(functions=["ttrl", "exact"], weights=[1.0, 0.5]))
    try:
        assert fn.score_baseline(inp, "6", [1]) == 0.5
    finally:
        fn.close()


def test_the_pool_scores_the_baseline_against_the_majority():
    pool = RewardPool(RewardConfig(name="ttrl", workers=1))
    pool.start()
    try:
        results: queue.Queue = queue.Queue()
        job = RewardJob(_inp(["5", "5", "6"], {}), "6", [1])
        assert pool.submit(lambda: job, results.put)
        out = results.get(timeout=60)
        assert isinstance(out, Scored)
        # Rewards 1, 1, 0; the baseline 6 against label 5 -> 0; clusters 0, 0, 1.
        assert (out.rewards, out.baseline_reward, out.clusters) == ([1.0, 1.0, 0.0], 0.0, [0, 0, 1])
    finally:
        pool.close()


# ------------------------------------------------------------------ configuration
def test_vote_size_rules():
    cfg = load_config("ttrl-tiny-cpu")
    assert (cfg.reward.ttrl.vote_size, cfg.sampling.group_size, cfg.data.test_time) == (32, 8, 1)
    with pytest.raises(ConfigError, match="below sampling.group_size"):
        load_config(None, ["reward.name=ttrl", "reward.ttrl.vote_size=4"])
    with pytest.raises(ConfigError, match="needs the ttrl reward"):
        load_config(None, ["reward.ttrl.vote_size=16"])


def test_test_time_is_label_free():
    with pytest.raises(ConfigError, match="compares with the label"):
        load_config(None, ["data.test_time=true", "reward.name=exact"])
    with pytest.raises(ConfigError, match="leave data.train_path empty"):
        load_config(None, ["data.test_time=true", "reward.name=ttrl", "data.train_path=x"])
    with pytest.raises(ConfigError, match="needs data.eval_path"):
        load_config(None, ["data.test_time=true", "reward.name=ttrl", "model.path=/m"])
    with pytest.raises(ConfigError, match="not accuracy"):
        load_config(None, ["eval.functions=[ttrl]"])


def test_evaluation_scores_ttrl_against_the_label():
    # ttrl alone -> math; weights kept; explicit functions win; a labelled reward unchanged.
    ev = eval_reward_config(
        RewardConfig(
            functions=["ttrl", "overlong"],
            weights=[1.0, 0.5],
            overlong={"max_length": 8, "cache_length": 2},
        ),
        None,
    )
    assert ev.resolved() == [("math", 1.0), ("overlong", 0.5)]
    assert eval_reward_config(RewardConfig(name="ttrl"), None).resolved() == [("math", 1.0)]
    assert eval_reward_config(RewardConfig(name="ttrl"), ["exact"]).resolved() == [("exact", 1.0)]
    exact = RewardConfig(name="exact")
    assert eval_reward_config(exact, None) is exact
