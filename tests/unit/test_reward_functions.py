"""reward.functions: TRL's own reward helpers, unchanged, called the way GRPOTrainer calls
them; weights, None handling and metrics of the combination; the configuration's errors."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError

from asyncrl.learner.rewards import RewardConfig, RewardInput, setup_reward
from asyncrl.learner.rewards.combine import NoReward, cap_text, function_labels

PLUGINS = "tests.unit.reward_plugins"
TRL_FUNCTIONS = [
    "trl.rewards:accuracy_reward",
    "trl.rewards:think_format_reward",
    f"{PLUGINS}:soft_overlong",  # get_soft_overlong_punishment(4, 2), bound in that module
]
CHAT_PROMPT = [{"role": "user", "content": "What is 1/3 + 1/3?"}]
# (text, completion token count) of three completions.
COMPLETIONS = [
    ("<think>add</think> \\boxed{\\frac{2}{3}}", 2),
    ("\\boxed{\\frac{1}{3}}", 3),
    ("<think>hmm</think> \\boxed{\\frac{4}{6}}", 5),
]


def group(prompt, row, completions=COMPLETIONS) -> RewardInput:
    return RewardInput(
        prompt,
        "rendered prompt",
        [t for t, _ in completions],
        [[9] * n for _, n in completions],
        row,
    )


def run(cfg: RewardConfig, inp: RewardInput):
    fn = setup_reward(cfg)
    try:
        return fn(inp)
    finally:
        fn.close()


def test_trl_helpers_plug_in_unchanged_with_weights():
    # accuracy (math-verify against the `solution` column): 2/3 -> 1, 1/3 -> 0, 4/6 -> 1.
    # think format: <think>...</think> first -> 1, 0, 1.
    # soft overlong, L_max 4, L_cache 2: 2 tokens -> 0; 3 -> (2-3)/2 = -0.5; 5 > 4 -> -1.
    # weights 1, 0.5, 1: [1 + 0.5 + 0, 0 + 0 - 0.5, 1 + 0.5 - 1] = [1.5, -0.5, 0.5].
    cfg = RewardConfig(functions=TRL_FUNCTIONS, weights=[1.0, 0.5, 1.0])
    row = {"prompt": CHAT_PROMPT, "solution": "$\\frac{2}{3}$"}
    res = run(cfg, group(CHAT_PROMPT, row))
    assert res.rewards == pytest.approx([1.5, -0.5, 0.5])
    # Means per function, unweighted: 2/3, 2/3, -1.5/3.
    assert res.metrics["reward_accuracy_reward_mean"] == pytest.approx(2 / 3)
    assert res.metrics["reward_think_format_reward_mean"] == pytest.approx(2 / 3)
    assert res.metrics["reward_soft_overlong_mean"] == pytest.approx(-0.5)


def test_none_is_no_reward_from_that_function():
    # accuracy_reward returns None for every sample when the gold does not parse: the sum
    # runs over the other functions only, [0.5*1 + 0, 0.5*0 - 0.5, 0.5*1 - 1], and the
    # accuracy function has no mean to report.
    cfg = RewardConfig(functions=TRL_FUNCTIONS, weights=[1.0, 0.5, 1.0])
    row = {"prompt": CHAT_PROMPT, "solution": "no latex here"}
    res = run(cfg, group(CHAT_PROMPT, row))
    assert res.rewards == pytest.approx([0.5, -0.5, -0.5])
    assert "reward_accuracy_reward_mean" not in res.metrics


def test_sample_without_any_reward_gets_zero_and_group_without_any_fails():
    # only_first scores completion 0 (1.0), None for the rest; `never` scores nothing.
    # Weighted 2 and 1: [2*1, no reward -> 0, no reward -> 0] (TRL's nan-aware sum).
    cfg = RewardConfig(functions=[f"{PLUGINS}:only_first", f"{PLUGINS}:never"], weights=[2, 1])
    res = run(cfg, group("plain prompt", {"prompt": "plain prompt"}))
    assert res.rewards == [2.0, 0.0, 0.0]
    with pytest.raises(NoReward, match="no reward function .*never.* scored any"):
        run(RewardConfig(functions=[f"{PLUGINS}:never"]), group("p", {}))


def test_plugin_gets_trl_keywords():
    # echo_kwargs scores len(completion_ids[i]) = 2, 3, 5 and logs how many columns it got
    # (solution and level: the prompt column is passed as prompts=, not as a column) and the
    # step (trainer_state.global_step = the group's policy version, 7).
    inp = group("q", {"prompt": "q", "solution": "1", "level": 3})
    inp.step = 7
    res = run(RewardConfig(functions=[f"{PLUGINS}:echo_kwargs"]), inp)
    assert res.rewards == [2.0, 3.0, 5.0]
    assert res.metrics["reward_echo_kwargs_columns"] == 2.0
    assert res.metrics["reward_echo_kwargs_step"] == 7.0


def test_plugin_sees_lists_and_chat_messages(tmp_path):
    # A plug-in named by file path, asserting the shapes TRL passes; returns 1 per sample.
    path = tmp_path / "shape_check.py"
    path.write_text(
        textwrap.dedent(
            """
            def check(prompts, completions, completion_ids, solution, **kwargs):
                n = len(completions)
                assert len(prompts) == len(completion_ids) == len(solution) == n
                assert solution == ["42"] * n
                for p, c in zip(prompts, completions):
                    assert p[0]["role"] == "user"
                    assert c == [{"role": "assistant", "content": c[0]["content"]}]
                return [1.0] * n
            """
        )
    )
    row = {"messages": CHAT_PROMPT, "solution": "42"}
    res = run(RewardConfig(functions=[f"{path}:check"]), group(CHAT_PROMPT, row))
    assert res.rewards == [1.0, 1.0, 1.0]


def test_builtins_and_plugins_mix_and_legacy_name_still_works():
    # exact (answer "4") + the test plug-in `exact` on the same column: both 1 for "4",
    # weights 1 and 3 -> 4; "5" -> 0. Labels: the built-in "exact", then "exact_2".
    comps = [("4", 1), ("5", 1)]
    cfg = RewardConfig(functions=["exact", f"{PLUGINS}:exact"], weights=[1, 3])
    res = run(cfg, group("2+2=", {"answer": "4"}, comps))
    assert res.rewards == [4.0, 0.0]
    assert res.metrics["reward_exact_2_mean"] == 0.5
    assert run(RewardConfig(name="exact"), group("2+2=", {"answer": "4"}, comps)).rewards == [
        1.0,
        0.0,
    ]


def test_completion_text_is_capped_keeping_the_tail():
    # Cap 10: "x" * 20 + "\\boxed{4}" (29 chars) keeps its last 10, "x\\boxed{4}": still 4.
    assert cap_text("x" * 20 + "\\boxed{4}", 10) == "x\\boxed{4}"
    cfg = RewardConfig(functions=["math"], max_completion_chars=10)
    res = run(
        cfg,
        group("q", {"answer": "4"}, [("x" * 20 + "\\boxed{4}", 1), ("\\boxed{4}" + "x" * 20, 1)]),
    )
    # The second one's box is cut off: its last 10 chars are x's, no answer -> 0.
    assert res.rewards == [1.0, 0.0]


def test_function_labels_are_bounded_and_unique():
    assert function_labels(["math", "a.b:Score.call", "/p/f.py:score", "math"]) == [
        "math",
        "call",
        "score",
        "math_2",
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"functions": ["math", "nope"]}, "neither a built-in"),
        ({"functions": ["math"], "weights": [1, 2]}, "2 entries for 1"),
        ({"weights": [1.0]}, "needs reward.functions"),
        ({"functions": []}, "is empty"),
        ({"functions": ["reward_model"]}, "reward_model_path"),
        ({"functions": ["overlong"]}, "overlong.max_length"),
        ({"max_consecutive_failures": -1}, "greater than or equal to 0"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        RewardConfig(**kwargs)


def test_moved_settings_point_to_their_new_place():
    from asyncrl.launch.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.answer_field moved to reward.answer_field"):
        load_config("tiny-cpu", ["data.answer_field=solution"])
    with pytest.raises(ConfigError, match="train.eval_every moved to eval.every"):
        load_config("tiny-cpu", ["train.eval_every=5"])
    cfg = load_config("tiny-cpu", ["reward.functions=[math,exact]", "reward.weights=[1,0.5]"])
    assert cfg.reward.resolved() == [("math", 1.0), ("exact", 0.5)]


def test_dry_run_catches_a_missing_column_before_training():
    from asyncrl.learner.rewards.combine import dry_run

    # TRL's accuracy_reward reads message lists: chat rows, as with GRPOTrainer.
    cfg = RewardConfig(functions=["trl.rewards:accuracy_reward"])
    dry_run(cfg, {"prompt": CHAT_PROMPT, "solution": "$1$"}, "prompt")  # fine; scores 0
    with pytest.raises(TypeError, match="solution"):  # it needs the column
        dry_run(cfg, {"prompt": CHAT_PROMPT, "answer": "1"}, "prompt")
    with pytest.raises(KeyError, match="reward.answer_field"):
        dry_run(RewardConfig(functions=["math"]), {"prompt": "q", "solution": "1"}, "prompt")
    dry_run(RewardConfig(functions=[f"{PLUGINS}:never"]), {"prompt": "q"}, "prompt")
