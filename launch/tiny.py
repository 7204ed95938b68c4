"""The embedded default task: tiny arithmetic data, a character tokenizer and a tiny causal LM.

`asyncrl local` has to train something on a fresh CPU-only machine with no downloads. This
module builds everything that run needs from a seed: train/held-out splits of an arithmetic
task with exact integer answers, a character-level tokenizer in Hugging Face format, and a
few-hundred-thousand-parameter Qwen2 model warm-started by a short supervised phase. The result
is cached on disk, keyed by a hash of the config, so later runs start at once.

The supervised phase is deliberately short: the warm-started model knows the format and is
right on some prompts greedily, but its sampled answers are spread over near misses, so RL
with exact-match rewards has visible room to sharpen it within minutes on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from asyncrl.protocol.settings import StrictModel

log = logging.getLogger(__name__)

# Bump when the on-disk layout or the build procedure changes, so stale caches are not reused.
FORMAT_VERSION = 1

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
# Every character a prompt or an answer of this task can contain, plus a few harmless extras
# so small task changes do not change the vocabulary.
CHARS = "0123456789+-*= "

# Counts builds in this process; tests use it to prove a cache hit did not rebuild.
BUILD_COUNT = 0


class TinyTaskConfig(StrictModel):
    """What the embedded default task and model look like; part of the cache key."""

    seed: int = Field(0, description="Seed of the data splits, model init and SFT order.")
    task: Literal["arithmetic", "agent"] = Field(
        "arithmetic",
        description="arithmetic: answer directly; agent: a calculator tool between turns "
        "(launch/tiny_agent.py, with env.name=tool).",
    )
    n_train: int = Field(4000, ge=1, description="Prompts in the RL train split.")
    n_eval: int = Field(
        256, ge=1, description="Prompts in the held-out split (disjoint from train and SFT data)."
    )
    n_sft: int = Field(
        4000, ge=1, description="Distinct problems of the warm start (disjoint from the others)."
    )
    operand_min: int = Field(0, ge=0, description="Smallest operand.")
    operand_max: int = Field(99, ge=0, description="Largest operand.")
    ops: str = Field(
        "+",
        min_length=1,
        description="Operators to draw from, any of '+-*'. "
        "Subtraction keeps the larger operand first, so answers are never negative.",
    )
    hidden_size: int = Field(128, ge=8, description="Model width.")
    num_layers: int = Field(2, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads (hidden_size must divide).")
    intermediate_size: int = Field(512, ge=8, description="MLP width.")
    sft_steps: int = Field(
        1400, ge=0, description="Optimizer steps of the supervised warm start; few on purpose."
    )
    sft_batch_size: int = Field(64, ge=1, description="Sequences per SFT step.")
    sft_noise: float = Field(
        0.55,
        ge=0.0,
        le=1.0,
        description="Fraction of SFT labels "
        "replaced (fresh at every draw) by a corrupted answer: leading digit "
        "shifted by one, remaining digits random. Above 0.5 the warm start's "
        "greedy first digit is often wrong while the correct answer stays "
        "the single most likely completion, which is what RL can fix.",
    )
    sft_noise_steps: int = Field(
        500,
        ge=0,
        description="The last this many SFT steps use "
        "noisy labels (see sft_noise; all of them when this is >= sft_steps); the steps before "
        "them are clean, "
        "so the model first learns the arithmetic, then the bias.",
    )
    sft_lr: float = Field(2e-3, gt=0, description="Peak SFT learning rate (AdamW, linear decay).")
    sft_threads: int = Field(
        2, ge=0, description="torch threads while building (0 = default); not in the cache key."
    )
    cache_dir: str | None = Field(
        None,
        description="Where built assets are cached; empty = "
        "$ASYNCRL_CACHE or ~/.cache/asyncrl. Not part of the cache key.",
    )

    @model_validator(mode="after")
    def _check(self) -> TinyTaskConfig:
        bad = set(self.ops) - set("+-*")
        if bad:
            raise ValueError(f"ops may only contain '+', '-', '*', got {sorted(bad)}")
        if self.operand_max < self.operand_min:
            raise ValueError("operand_max must be >= operand_min")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        n_ops = len(set(self.ops))
        span = self.operand_max - self.operand_min + 1
        # Subtraction only keeps ordered pairs, so it has about half the distinct problems.
        total = sum(span * span if op != "-" else span * (span + 1) // 2 for op in set(self.ops))
        need = self.n_train + self.n_eval + self.n_sft
        if need > total:
            raise ValueError(
                f"n_train + n_eval + n_sft = {need} exceeds the {total} distinct "
                f"problems of {n_ops} op(s) over [{self.operand_min}, "
                f"{self.operand_max}]; widen the operand range"
            )
        return self


@dataclass
class TinyAssets:
    """Paths of a built (or cached) tiny task."""

    model_path: str
    train_path: str
    eval_path: str
    prompt_field: str = "prompt"
    answer_field: str = "answer"


def _all_problems(cfg: TinyTaskConfig) -> list[tuple[int, str, int]]:
    lo, hi = cfg.operand_min, cfg.operand_max
    out = []
    for op in sorted(set(cfg.ops)):
        for a in range(lo, hi + 1):
            for b in range(lo, hi + 1):
                if op == "-" and b > a:
                    continue
                out.append((a, op, b))
    return out


def _row(a: int, op: str, b: int) -> dict[str, str]:
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return {"prompt": f"{a}{op}{b}=", "answer": str(value)}


def make_splits(cfg: TinyTaskConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, eval, sft) rows, pairwise disjoint, a pure function of the config."""
    problems = _all_problems(cfg)
    random.Random(cfg.seed).shuffle(problems)
    rows = [_row(*p) for p in problems]
    e, t, s = cfg.n_eval, cfg.n_train, cfg.n_sft
    return rows[e : e + t], rows[:e], rows[e + t : e + t + s]


def cache_key(cfg: TinyTaskConfig) -> str:
    """Hash of everything that changes the built assets (not where or how fast they build)."""
    # `task` joined later: the arithmetic task keeps the key (and cache) it always had.
    skip = {"cache_dir", "sft_threads"} | ({"task"} if cfg.task == "arithmetic" else set())
    fields = cfg.model_dump(exclude=skip)
    blob = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    env = os.environ.get("ASYNCRL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "asyncrl"


def build_tokenizer():
    """A character-level `PreTrainedTokenizerFast`: one id per character, no added BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every single character is its own pre-token, so WordLevel maps it to one id.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # Fuse joins tokens with nothing in between (WordLevel would otherwise insert spaces).
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=64,
    )


def tiny_model_config(cfg: TinyTaskConfig, vocab_size: int | None = None):
    """The transformers `Qwen2Config` of the tiny model."""
    from transformers import Qwen2Config

    ids = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    return Qwen2Config(
        vocab_size=vocab_size or len(SPECIAL_TOKENS) + len(CHARS),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )


def _sft_batch(tokenizer, rows: list[dict]):
    """Right-padded prompt+answer+EOS with labels only on the completion."""
    import torch

    eos = tokenizer.eos_token_id
    seqs, labels = [], []
    for r in rows:
        p = tokenizer.encode(r["prompt"], add_special_tokens=False)
        c = tokenizer.encode(r["answer"], add_special_tokens=False) + [eos]
        seqs.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, la) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(la)] = torch.tensor(la)
        mask[i, : len(s)] = 1
    return ids, mask, lab


def corrupt_answer(answer: str, rng: random.Random) -> str:
    """A systematically wrong answer: leading digit + 1 (mod 10), other digits random.

    The shift is the same for every draw, so the corrupted mass piles onto one wrong first
    digit (beating the right one when the noise rate is above one half), while the random tail
    spreads it over many different wrong completions (so no single wrong answer beats the
    right one).
    """
    sign = "-" if answer.startswith("-") else ""
    digits = answer[len(sign) :]
    lead = str((int(digits[0]) + 1) % 10)
    tail = "".join(rng.choice("0123456789") for _ in digits[1:])
    return sign + lead + tail


def _warm_start(cfg: TinyTaskConfig, tokenizer, sft_rows: list[dict], on_step=None):
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(tiny_model_config(cfg, vocab_size=len(tokenizer)))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny model: %d parameters; SFT %d steps", n_params, cfg.sft_steps)
    opt, sched = sft_optimizer(model, cfg)
    rng = random.Random(cfg.seed + 1)
    order: list[int] = []
    model.train()
    t0 = time.monotonic()
    for step in range(cfg.sft_steps):
        batch = []
        for _ in range(cfg.sft_batch_size):
            if not order:
                order = list(range(len(sft_rows)))
                rng.shuffle(order)
            row = sft_rows[order.pop()]
            noisy_phase = step >= cfg.sft_steps - cfg.sft_noise_steps
            if noisy_phase and cfg.sft_noise and rng.random() < cfg.sft_noise:
                row = {**row, "answer": corrupt_answer(row["answer"], rng)}
            batch.append(row)
        ids, mask, lab = _sft_batch(tokenizer, batch)
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == cfg.sft_steps:
            log.info(
                "tiny SFT step %d/%d loss %.4f (%.1fs)",
                step + 1,
                cfg.sft_steps,
                loss.item(),
                time.monotonic() - t0,
            )
        if on_step is not None:
            on_step(step + 1, model, loss.item())
    model.eval()
    return model


def sft_optimizer(model, cfg: TinyTaskConfig):
    """AdamW with 20 warm-up steps, then linear decay to 0 at `sft_steps`."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    decay = lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / max(1, cfg.sft_steps))  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, decay)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _build(cfg: TinyTaskConfig, out: Path) -> None:
    """Build every asset into `out` (a fresh private directory)."""
    import torch
    from transformers import GenerationConfig

    global BUILD_COUNT
    BUILD_COUNT += 1
    train, held_out, sft = make_splits(cfg)
    _write_jsonl(out / "train.jsonl", train)
    _write_jsonl(out / "eval.jsonl", held_out)
    tokenizer = build_tokenizer()
    prev_threads = torch.get_num_threads()
    if cfg.sft_threads:
        torch.set_num_threads(cfg.sft_threads)
    try:
        model = _warm_start(cfg, tokenizer, sft)
    finally:
        torch.set_num_threads(prev_threads)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=8,
    )
    model_dir = out / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    (out / "task.json").write_text(
        json.dumps(
            {"format": FORMAT_VERSION, "config": cfg.model_dump(exclude={"cache_dir"})}, indent=2
        )
    )


def _assets(root: Path) -> TinyAssets:
    return TinyAssets(
        model_path=str(root / "model"),
        train_path=str(root / "train.jsonl"),
        eval_path=str(root / "eval.jsonl"),
    )


def setup_tiny_assets(cfg: TinyTaskConfig | None = None) -> TinyAssets:
    """Build the tiny task and model, or return the cached build for this config.

    Safe when several processes call it at once: each builds in a private temporary directory
    and publishes it with an atomic rename; the first rename wins and the others discard their
    copy, so a reader never sees a half-written cache entry.
    """
    cfg = cfg or TinyTaskConfig()
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    final = root / f"tiny-{cache_key(cfg)}"
    if final.is_dir():
        return _assets(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        t0 = time.monotonic()
        log.info("building the tiny task and model into %s (one-off, cached)", final)
        if cfg.task == "agent":
            from asyncrl.launch.tiny_agent import build_agent as _build_agent

            _build_agent(cfg, tmp)
        else:
            _build(cfg, tmp)
        try:
            os.rename(tmp, final)
            log.info("tiny assets built in %.1fs", time.monotonic() - t0)
        except OSError:
            # Another process published the same key first; its copy is equivalent.
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _assets(final)
