"""The embedded tiny task: deterministic splits, char tokenizer, loadable model, safe cache."""

from __future__ import annotations

import os
import random
import threading

import pytest

from asyncrl.launch import tiny
from asyncrl.launch.tiny import (
    TinyTaskConfig,
    build_tokenizer,
    cache_key,
    corrupt_answer,
    make_splits,
    setup_tiny_assets,
)
from asyncrl.learner.data import load_rows


def small_cfg(tmp_path, **kw) -> TinyTaskConfig:
    base = dict(
        n_train=60,
        n_eval=20,
        n_sft=40,
        operand_max=20,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        sft_steps=3,
        sft_noise_steps=1,
        sft_batch_size=8,
        cache_dir=str(tmp_path / "cache"),
    )
    base.update(kw)
    return TinyTaskConfig(**base)


def test_splits_deterministic_and_disjoint(tmp_path):
    cfg = small_cfg(tmp_path, ops="+-*")
    a, b = make_splits(cfg), make_splits(cfg)
    assert a == b
    train, held, sft = a
    assert (len(train), len(held), len(sft)) == (60, 20, 40)
    prompts = [{r["prompt"] for r in split} for split in (train, held, sft)]
    assert not prompts[0] & prompts[1] and not prompts[0] & prompts[2]
    assert not prompts[1] & prompts[2]
    assert make_splits(small_cfg(tmp_path, seed=1, ops="+-*"))[1] != held
    for r in train + held + sft:
        expr = r["prompt"].rstrip("=")
        assert r["prompt"].endswith("=") and int(r["answer"]) == eval(expr)
        assert int(r["answer"]) >= 0


def test_config_rejects_too_many_rows_and_unknown_fields(tmp_path):
    with pytest.raises(ValueError, match="distinct"):
        small_cfg(tmp_path, n_train=1000)
    with pytest.raises(ValueError):
        TinyTaskConfig(bogus=1)
    with pytest.raises(ValueError, match="ops"):
        TinyTaskConfig(ops="/")


def test_cache_key_ignores_location_and_threads(tmp_path):
    cfg = small_cfg(tmp_path)
    assert cache_key(cfg) == cache_key(cfg.model_copy(update={"cache_dir": "/x", "sft_threads": 1}))
    assert cache_key(cfg) != cache_key(cfg.model_copy(update={"seed": 5}))


def test_tokenizer_one_id_per_char_and_eos():
    tok = build_tokenizer()
    ids = tok.encode("12+7=", add_special_tokens=False)
    assert ids == [tok.convert_tokens_to_ids(c) for c in "12+7="]
    assert tok.encode("11", add_special_tokens=False) == [ids[0], ids[0]]
    assert tok("12+7=")["input_ids"] == ids  # no BOS/EOS added behind the caller's back
    assert tok.decode(ids) == "12+7="
    with_eos = tok.encode("19", add_special_tokens=False) + [tok.eos_token_id]
    assert tok.decode(with_eos, skip_special_tokens=True) == "19"
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3


def test_corrupted_answers_have_a_wrong_lead_digit():
    rng = random.Random(0)
    for ans in ["7", "9", "19", "105", "-42"]:
        bad = corrupt_answer(ans, rng)
        assert len(bad) == len(ans) and bad != ans
        lead = 1 if ans.startswith("-") else 0
        assert bad[lead] == str((int(ans[lead]) + 1) % 10)


def test_build_load_and_cache_hit(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = small_cfg(tmp_path)
    before = tiny.BUILD_COUNT
    assets = setup_tiny_assets(cfg)
    assert tiny.BUILD_COUNT == before + 1
    train, held = load_rows(assets.train_path), load_rows(assets.eval_path)
    assert (train, held) == make_splits(cfg)[:2]
    assert assets.prompt_field in train[0] and assets.answer_field in train[0]

    model = AutoModelForCausalLM.from_pretrained(assets.model_path)
    tok = AutoTokenizer.from_pretrained(assets.model_path)
    assert tok.encode("12+7=", add_special_tokens=False) == build_tokenizer().encode(
        "12+7=", add_special_tokens=False
    )
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert os.path.exists(os.path.join(assets.model_path, "model.safetensors"))

    stamp = os.path.getmtime(os.path.join(assets.model_path, "model.safetensors"))
    again = setup_tiny_assets(cfg)
    assert again == assets and tiny.BUILD_COUNT == before + 1
    assert os.path.getmtime(os.path.join(assets.model_path, "model.safetensors")) == stamp
    # Only the published entry is left: no temporary build directories.
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        os.path.basename(os.path.dirname(assets.model_path))
    ]


def test_concurrent_builders_agree(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = small_cfg(tmp_path)
    barrier = threading.Barrier(3)
    results, errors = [], []

    def build():
        try:
            barrier.wait()
            results.append(setup_tiny_assets(cfg))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 3 and all(r == results[0] for r in results)
    AutoModelForCausalLM.from_pretrained(results[0].model_path)
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_losing_publisher_keeps_the_winner(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path)
    first = setup_tiny_assets(cfg)
    final = os.path.dirname(first.model_path)
    stamp = os.path.getmtime(os.path.join(first.model_path, "model.safetensors"))
    # Simulate a process that checked the cache just before the winner published.
    real_is_dir = tiny.Path.is_dir
    calls = {"n": 0}

    def is_dir_once_false(self):
        if str(self) == final and calls["n"] == 0:
            calls["n"] += 1
            return False
        return real_is_dir(self)

    monkeypatch.setattr(tiny.Path, "is_dir", is_dir_once_false)
    second = setup_tiny_assets(cfg)
    assert second == first
    assert os.path.getmtime(os.path.join(first.model_path, "model.safetensors")) == stamp
    assert len(list((tmp_path / "cache").iterdir())) == 1
