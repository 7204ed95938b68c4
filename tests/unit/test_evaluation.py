"""Held-out evaluation with the training reward, against hand-computable models, a hand-rolled
greedy loop and hand-computed pass@k."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from asyncrl.launch.tiny import TinyTaskConfig, build_tokenizer, tiny_model_config
from asyncrl.learner.evaluation import (
    evaluate_rows,
    generate_completions,
    pass_at_k,
    score_rows,
)
from asyncrl.learner.rewards import RewardConfig, RewardResult, setup_reward

PROMPTS = ["1+2=", "13+4=", "5+61=", "99+99=", "0+0="]


def exact_eval(model, tok, rows, answer_field="answer", **kw) -> dict:
    """evaluate_rows scored by the exact-match reward (the tiny task's)."""
    reward = setup_reward(RewardConfig(name="exact", answer_field=answer_field))
    return evaluate_rows(model, tok, rows, reward, answer_field=answer_field, **kw)


def make_model(tok, seed=0):
    from transformers import Qwen2ForCausalLM

    cfg = TinyTaskConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    mcfg = tiny_model_config(cfg, vocab_size=len(tok))
    mcfg.tie_word_embeddings = False
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(mcfg)


def constant_model(tok, token: str):
    """A model whose next token is always `token`: the head ignores the hidden state."""
    model = make_model(tok)
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-50.0)
        head.bias[tok.convert_tokens_to_ids(token)] = 50.0
    model.lm_head = head
    return model


def hand_greedy(model, tok, prompt, max_new_tokens):
    """One prompt at a time, no padding, no cache: the reference greedy decoder."""
    ids = tok.encode(prompt, add_special_tokens=False)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True).strip()


def test_constant_digit_model_is_hand_computable():
    tok = build_tokenizer()
    model = constant_model(tok, "7")
    rows = [
        {"prompt": "3+4=", "answer": "77"},
        {"prompt": "10+67=", "answer": "77"},
        {"prompt": "1+6=", "answer": "7"},
        {"prompt": "0+0=", "answer": "777"},
    ]
    # Without EOS the completion is exactly max_new_tokens sevens: "77" solves rows 1 and 2.
    m = exact_eval(model, tok, rows, max_new_tokens=2)
    assert m["eval_accuracy"] == 0.5 and m["eval_reward_mean"] == 0.5
    assert m["eval_pass_at_k"] == 0.5  # k = 1: pass@1 is the accuracy
    assert exact_eval(model, tok, rows, max_new_tokens=1)["eval_accuracy"] == 0.25
    # 4 samples of "777" each: only the last row, all 4 of its samples -> 4/16 and pass@4 1/4.
    m = exact_eval(model, tok, rows, samples=4, temperature=1.0, max_new_tokens=3)
    assert m["eval_pass_at_k"] == 0.25 and m["eval_reward_mean"] == 0.25
    assert m["eval_rows"] == 4.0 and m["eval_reward_errors"] == 0.0


def test_chat_rows_go_through_the_chat_template():
    # `messages` rows crashed evaluation ("text input must be of type str"). The template
    # renders the user content followed by "=", so "3+4" is read as "3+4=".
    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}="
    model = constant_model(tok, "7")
    rows = [
        {"messages": [{"role": "user", "content": "3+4"}], "answer": "77"},
        {"messages": [{"role": "user", "content": "1+6"}], "answer": "7"},
    ]
    m = exact_eval(model, tok, rows, prompt_field="messages", max_new_tokens=2)
    assert m["eval_accuracy"] == 0.5


def test_eos_ends_the_completion():
    tok = build_tokenizer()
    model = constant_model(tok, "<eos>")
    rows = [{"q": "3+4=", "a": ""}, {"q": "1+1=", "a": "2"}]
    assert exact_eval(model, tok, rows, prompt_field="q", answer_field="a")["eval_accuracy"] == 0.5


def test_matches_hand_rolled_greedy_with_left_padding():
    tok = build_tokenizer()
    model = make_model(tok, seed=3)
    with torch.no_grad():  # make EOS likely somewhere so truncation at EOS is exercised
        model.lm_head.weight[tok.eos_token_id] *= 4
    ref = [hand_greedy(model, tok, p, 6) for p in PROMPTS]
    got = generate_completions(model, tok, PROMPTS, max_new_tokens=6, batch_size=2)
    assert [g[0] for g in got] == ref
    rows = [
        {"prompt": p, "answer": r if i % 2 == 0 else r + "x"}
        for i, (p, r) in enumerate(zip(PROMPTS, ref))
    ]
    m = exact_eval(model, tok, rows, max_new_tokens=6, batch_size=2)
    assert m["eval_accuracy"] == pytest.approx(3 / 5)


def test_restores_train_mode_and_padding_side():
    tok = build_tokenizer()
    tok.padding_side = "right"
    model = make_model(tok).train()
    exact_eval(model, tok, [{"prompt": "1+1=", "answer": "2"}])
    assert model.training and tok.padding_side == "right"
    model.eval()
    exact_eval(model, tok, [{"prompt": "1+1=", "answer": "2"}])
    assert not model.training
    assert exact_eval(model, tok, []) == {}


def test_pass_at_k_unbiased_estimator():
    # 1 - C(n-c, k) / C(n, k): n=5, c=2: k=1 -> 1 - 3/5 = 0.4; k=2 -> 1 - 3/10 = 0.7;
    # k=4 > n-c=3 -> 1; c=0 -> 0.
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


class ScriptedReward:
    """Returns the completion texts as rewards ("0.5" -> 0.5); raises on "boom"; None on "-"."""

    def __call__(self, inp):
        if "boom" in inp.completions:
            raise RuntimeError("reward bug")
        return RewardResult([None if c == "-" else float(c) for c in inp.completions])

    def close(self):
        pass


def test_score_rows_threshold_labels_and_errors():
    # Threshold 1. Row A (labelled): rewards 1, 0.5 -> 1 solved of 2. Row B (no label):
    # 2, None (-> 0) -> 1 of 2. Row C raises: left out, counted.
    # reward mean (1 + 0.5 + 2 + 0) / 4 = 0.875; accuracy (labelled rows only) 1/2;
    # pass@2 per row: A 1, B 1 -> 1. maj@2 (labelled rows): A's answers 1 and 0.5 tie, the
    # first (1) wins and is not the label x -> 0.
    rows = [{"prompt": "a", "answer": "x"}, {"prompt": "b"}, {"prompt": "c", "answer": "y"}]
    samples = [[("1", [1]), ("0.5", [1])], [("2", [1]), ("-", [1])], [("boom", [1])] * 2]
    m = score_rows(
        ScriptedReward(),
        rows,
        ["a", "b", "c"],
        samples,
        prompt_field="prompt",
        answer_field="answer",
        success_threshold=1.0,
    )
    assert m == {
        "eval_reward_mean": 0.875,
        "eval_accuracy": 0.5,
        "eval_pass_at_k": 1.0,
        "eval_maj_at_k": 0.0,
        "eval_rows": 2.0,
        "eval_reward_errors": 1.0,
    }
    # No labelled row scored: no accuracy at all (not 0).
    m = score_rows(
        ScriptedReward(),
        rows[1:2],
        ["b"],
        samples[1:2],
        prompt_field="prompt",
        answer_field="answer",
        success_threshold=1.0,
    )
    assert "eval_accuracy" not in m and m["eval_pass_at_k"] == 1.0


def test_pool_scorer_survives_a_hanging_and_a_raising_reward():
    # The tests' `moody` plug-in hangs on prompt "hang" and raises on "raise": with a 2 s
    # deadline both rows are left out and counted; "ok" (answer "4": "4" -> 1, "5" -> 0) is
    # scored: reward mean 1/2, accuracy 1/2, pass@2 1, maj@2 1 (the tie 4/5 goes to 4, seen
    # first, the label).
    from asyncrl.learner.evaluation import PoolScorer

    cfg = RewardConfig(
        functions=["tests.unit.reward_plugins:moody"], workers=1, timeout_seconds=2.0
    )
    scorer = PoolScorer(cfg)
    try:
        rows = [{"prompt": p, "answer": "4"} for p in ("hang", "ok", "raise")]
        samples = [[("4", [1]), ("5", [1])]] * 3
        t0 = time.monotonic()
        m = score_rows(
            scorer,
            rows,
            [r["prompt"] for r in rows],
            samples,
            prompt_field="prompt",
            answer_field="answer",
            success_threshold=1.0,
        )
        assert time.monotonic() - t0 < 30.0
    finally:
        scorer.close()
    assert m == {
        "eval_reward_mean": 0.5,
        "eval_accuracy": 0.5,
        "eval_pass_at_k": 1.0,
        "eval_maj_at_k": 1.0,
        "eval_rows": 1.0,
        "eval_reward_errors": 2.0,
    }


def test_loop_evaluate_sets_gauges_and_stats():
    from asyncrl.launch.config import load_config
    from asyncrl.learner.loop import evaluate
    from asyncrl.learner.metrics import LearnerMetrics

    tok = build_tokenizer()
    cfg = load_config("tiny-cpu", ["sampling.max_new_tokens=2", "eval.samples=2"])
    engine = SimpleNamespace(rank=0, model=constant_model(tok, "7"))
    hub = SimpleNamespace(metrics=LearnerMetrics())
    rows = [{"prompt": "3+4=", "answer": "77"}, {"prompt": "1+6=", "answer": "7"}]
    stats: dict = {}
    # Both samples of row 1 are "77" (solved), of row 2 too (not): accuracy 1/2, pass@2 1/2.
    assert evaluate(engine, tok, rows, cfg, hub, stats) == 0.5
    assert stats["eval_pass_at_k"] == 0.5 and stats["eval_reward_mean"] == 0.5
    reg = hub.metrics.registry
    assert reg.get_sample_value("asyncrl_eval_accuracy") == 0.5
    assert reg.get_sample_value("asyncrl_eval_pass_at_k") == 0.5
    assert reg.get_sample_value("asyncrl_eval_reward_mean") == 0.5


@pytest.mark.gpu
def test_cuda_bfloat16():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tok = build_tokenizer()
    model = constant_model(tok, "7").to("cuda", torch.bfloat16)
    rows = [{"prompt": "3+4=", "answer": "77"}, {"prompt": "1+6=", "answer": "7"}]
    assert exact_eval(model, tok, rows, max_new_tokens=2)["eval_accuracy"] == 0.5
