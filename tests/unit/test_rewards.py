"""Reward functions (learner/rewards), with hand-derived expected values."""

from __future__ import annotations

import string
import sys
import textwrap

import pytest

from asyncrl.learner.rewards import RewardConfig, RewardInput, has_variance, setup_reward
from asyncrl.learner.rewards.math import cheap_equal, extract_answer, gold_answer
from asyncrl.learner.rewards.overlong import overlong_penalty


def group(prompt, completions: list[str], row: dict, lengths=None) -> RewardInput:
    """A group whose completion i has lengths[i] token ids (default: one per character)."""
    lengths = lengths or [len(c) for c in completions]
    return RewardInput(prompt, str(prompt), completions, [[7] * n for n in lengths], row)


def score(cfg: RewardConfig, prompt, completions: list[str], row: dict, lengths=None):
    fn = setup_reward(cfg)
    try:
        return fn(group(prompt, completions, row, lengths))
    finally:
        fn.close()


def test_exact():
    # Only the completion equal to "46" after stripping whitespace scores.
    res = score(RewardConfig(name="exact"), "12+34=", ["46", " 46\n", "47", "4 6"], {"answer": 46})
    assert res.rewards == [1.0, 1.0, 0.0, 0.0]


def test_exact_missing_field_names_config():
    with pytest.raises(KeyError, match="reward.answer_field"):
        score(RewardConfig(name="exact"), "p", ["1"], {"solution": "1"})


@pytest.mark.parametrize(
    "text, expected",
    [
        # Last box wins; nested braces are balanced.
        ("first \\boxed{1}, finally \\boxed{\\frac{1}{\\sqrt{2}}}.", "\\frac{1}{\\sqrt{2}}"),
        # An unclosed (truncated) last box falls back to the previous complete one.
        ("\\boxed{3} then \\boxed{4", "3"),
        # After the last "answer is": strip ':' , '$' and the trailing period.
        ("I think the answer is 5. No, the answer is: $x^2$.", "x^2"),
        # Sentence after the answer is dropped.
        ("The answer is 7. Let me double-check 8 more times", "7"),
        # Last number: thousands commas, negative, decimal.
        ("we get 3, then 1,000 and finally -2.5", "-2.5"),
        ("total is 1,234,567", "1,234,567"),
        # Fraction; "x-3" is subtraction, not a negative number.
        ("x-3 gives 4/5", "4/5"),
        ("so x-3", "3"),
        ("46", "46"),
        ("no digits here", None),
    ],
)
def test_math_extraction(text, expected):
    assert extract_answer(text) == expected


def test_gold_answer_formats():
    assert gold_answer("blah #### 1,200") == "1,200"  # GSM8K
    assert gold_answer("so \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert gold_answer(" 42 ") == "42"


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("\\frac{1}{2}", "0.5", True),  # 1/2 == 0.5 exactly
        ("\\dfrac{3}{4}", "3/4", True),
        ("\\frac12", "-\\frac{-1}{2}", True),  # shorthand; -(-1/2) = 1/2
        ("1,000", "1000", True),
        ("0.333333", "1/3", True),  # |0.333333 - 1/3| / (1/3) = 1e-6: within rel_tol 1e-6
        ("2", "3", False),
        ("x + 1", "x+1", True),  # same after whitespace normalisation
        ("\\sqrt{4}", "2", None),  # not decidable in-process: goes to math-verify
    ],
)
def test_math_cheap_equivalence(a, b, expected):
    assert cheap_equal(a, b) is expected


def test_math_reward_with_math_verify_worker():
    # One spawned worker. Gold 1/2: boxed 0.5 (numeric fast path, 1); \sqrt{4} = 2 after
    # "answer is" (math-verify, 0); no answer at all (0, not extracted: 2 of 3 extracted).
    # Gold (x+1)^2: x^2+2x+1 expands to it (math-verify, 1); x^2+1 does not (0).
    cfg = RewardConfig(name="math", verify_workers=1, verify_timeout_seconds=30.0)
    fn = setup_reward(cfg)
    try:
        res = fn(
            group(
                "q",
                ["so \\boxed{0.5}", "the answer is \\sqrt{4}", "none"],
                {"answer": "\\frac{1}{2}"},
            )
        )
        assert res.rewards == [1.0, 0.0, 0.0]
        assert res.metrics["reward_extracted_frac"] == pytest.approx(2 / 3)
        assert res.metrics["reward_errors"] == 0.0
        res = fn(group("q", ["\\boxed{x^2+2x+1}", "\\boxed{x^2+1}"], {"answer": "(x+1)^2"}))
        assert res.rewards == [1.0, 0.0]
    finally:
        fn.close()


def test_verify_pool_timeout_kills_and_restarts(tmp_path, monkeypatch):
    # A check still running at the group timeout scores 0 and counts as an error; the stuck
    # worker is killed and the next group gets a fresh pool. The worker function sleeps for
    # `pred` seconds and answers gold == "yes"; it lives in a module on sys.path, which spawned
    # workers inherit.
    from asyncrl.learner.rewards.math import VerifyPool

    (tmp_path / "slow_verify_helper.py").write_text(
        textwrap.dedent(
            """
            import time

            def ready():
                return True

            def slow(gold, pred):
                time.sleep(float(pred))
                return gold == "yes"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from slow_verify_helper import ready, slow

    # One worker, warmed up before the timer starts, so the fast checks finish well inside it
    # even on a loaded machine; the third one hangs.
    pool = VerifyPool(workers=1, timeout_s=1.0, fn=slow, warm=ready)
    try:
        assert pool.verify([("yes", "0"), ("no", "0"), ("yes", "60")]) == ([True, False, False], 1)
        assert pool._pool is None  # killed
        assert pool.verify([("yes", "0")]) == ([True], 0)
    finally:
        pool.close()
    sys.modules.pop("slow_verify_helper", None)


def test_ttrl_majority_and_label_accuracy():
    # Answers 7, 7, 8, none, 7.0: 7 has three votes (7.0 == 7), so those three get 1;
    # the unanswered completion gets 0. Ground truth 7 -> label accuracy 1.
    comps = ["\\boxed{7}", "the answer is 7", "8", "no idea", "7.0"]
    res = score(RewardConfig(name="ttrl"), "q", comps, {"answer": "7"})
    assert res.rewards == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert res.metrics["ttrl_label_accuracy"] == 1.0
    assert res.metrics["reward_extracted_frac"] == pytest.approx(4 / 5)
    assert res.metrics["ttrl_majority_frac"] == pytest.approx(3 / 5)


def test_ttrl_tie_goes_to_first_and_wrong_label():
    # 5, 6, 6, 5: two votes each, 5 seen first wins. Ground truth 6 -> accuracy 0.
    res = score(RewardConfig(name="ttrl"), "q", ["5", "6", "6", "5"], {"answer": 6})
    assert res.rewards == [1.0, 0.0, 0.0, 1.0]
    assert res.metrics["ttrl_label_accuracy"] == 0.0


def test_ttrl_tiny_task_without_answer_field():
    # Bare integers (the tiny task); no ground truth -> no accuracy metric.
    res = score(RewardConfig(name="ttrl"), "12+34=", ["46", "46", "45", " 46"], {})
    assert res.rewards == [1.0, 1.0, 0.0, 1.0]
    assert "ttrl_label_accuracy" not in res.metrics
    res = score(RewardConfig(name="ttrl"), "q", ["a", "b"], {"answer": "1"})
    assert res.rewards == [0.0, 0.0]  # nobody answered: no label
    assert res.metrics["ttrl_label_accuracy"] == 0.0


def test_overlong_penalty_regimes():
    # L_max 20, L_cache 5 -> expected length 15. n=15: 0; n=18: (15-18)/5 = -0.6;
    # n=20: (15-20)/5 = -1; n=21: beyond L_max, -1.
    assert overlong_penalty(15, 20, 5) == 0.0
    assert overlong_penalty(18, 20, 5) == pytest.approx(-0.6)
    assert overlong_penalty(20, 20, 5) == pytest.approx(-1.0)
    assert overlong_penalty(21, 20, 5) == -1.0


def test_overlong_wraps_base_reward():
    # exact rewards [1, 1, 0] plus penalties [0, -0.6, -1] -> [1, 0.4, -1]; mean penalty -1.6/3.
    cfg = RewardConfig(
        name="exact", overlong={"enabled": True, "max_length": 20, "cache_length": 5}
    )
    res = score(cfg, "12+34=", ["46", "46", "4"], {"answer": "46"}, [15, 18, 21])
    assert res.rewards == pytest.approx([1.0, 0.4, -1.0])
    assert res.metrics["overlong_penalty_mean"] == pytest.approx(-1.6 / 3)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_reward_plugin.py").write_text(
        textwrap.dedent(
            """
            def length_score(prompts, completions, answer, **kw):
                return [len(c) / 10 + (c == a) for c, a in zip(completions, answer)]

            def too_few(prompts, completions, **kw):
                return [0.0]

            def inf(prompts, completions, **kw):
                return [float("inf")] * len(completions)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_reward_plugin"
    sys.modules.pop("my_reward_plugin", None)


def test_plugin_loads_and_calls(plugin_module):
    # "ab": 2/10 = 0.2; "xyz": 0.3 + 1 (equals the row's answer, passed as a keyword).
    cfg = RewardConfig(name="plugin", plugin=f"{plugin_module}:length_score")
    res = score(cfg, "p", ["ab", "xyz"], {"answer": "xyz"})
    assert res.rewards == pytest.approx([0.2, 1.3])


def test_plugin_errors(plugin_module):
    with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
        score(RewardConfig(name="plugin", plugin=f"{plugin_module}:too_few"), "p", ["a", "b"], {})
    with pytest.raises(ValueError, match="finite"):
        score(RewardConfig(name="plugin", plugin=f"{plugin_module}:inf"), "p", ["a"], {})
    with pytest.raises(ValueError, match="reward plug-in.*no attribute 'missing'"):
        setup_reward(RewardConfig(name="plugin", plugin=f"{plugin_module}:missing"))
    with pytest.raises(ValueError, match="reward plug-in.*cannot import"):
        setup_reward(RewardConfig(name="plugin", plugin="no_such_module_xyz:f"))


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    """A randomly initialised 1-layer Qwen2 classifier with a character-level tokenizer."""
    torch = pytest.importorskip("torch")
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification

    path = tmp_path_factory.mktemp("tiny_rm")
    chars = string.ascii_letters + string.digits + string.punctuation + " \n"
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # transformers 5 loads this back as Qwen2Tokenizer (from config.json's model_type), which
    # invents a pad token past the vocabulary unless the tokenizer names one.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=1,
        eos_token_id=1,
    )
    Qwen2ForSequenceClassification(cfg).save_pretrained(path)
    return str(path)


def test_reward_model_scores(tiny_reward_model):
    comps = ["46", "a much longer completion: 1+2=3", "x", "", "46 "]

    def run(batch_size, max_length=None):
        cfg = RewardConfig(
            name="reward_model",
            reward_model_path=tiny_reward_model,
            reward_model_batch_size=batch_size,
            reward_model_device="cpu",
            reward_model_max_length=max_length,
        )
        return score(cfg, "12+34=", comps, {}).rewards

    one, four = run(1), run(4)
    assert len(one) == len(comps)
    assert run(1) == one  # deterministic
    assert four == pytest.approx(one, abs=1e-5)  # padding does not change scores
    assert len(set(one)) > 1
    # Left truncation to 4 tokens keeps the completion's end: "12+34=46" and "34=46" -> "4=46".
    cut = run(2, max_length=4)
    assert len(cut) == len(comps) and cut[0] != pytest.approx(one[0], abs=1e-7)


def test_has_variance():
    assert has_variance([0.0, 1.0])
    assert not has_variance([1.0, 1.0, 1.0])
    assert not has_variance([0.5])
    assert not has_variance([])
    assert not has_variance([0.0, 1e-7])  # within tol
    assert has_variance([0.0, 1e-3], tol=1e-4)
