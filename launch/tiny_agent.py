"""The embedded agentic task (`tiny.task: agent`, preset `tiny-agent-cpu`): long additions the
tiny model cannot do by itself, a `calculator` tool it can call, and a warm start that teaches
the call format.

Prompts are `a+b=` with five-digit operands: far more than the tiny model can add in its
head, while copying digits is easy for it. The episode it is taught: a tool call
`<tool_call>{"name":"calculator","arguments":{"expression":"a+b"}}</tool_call>`, the tool's
result rendered by the chat template as `<tool_response>...</tool_response>`, then the
result copied as the final answer. Observations are made by the same tool environment and
rendering the generators use, so the warm start sees exactly the tokens RL will.

The warm start is flawed on purpose, the way the arithmetic task's is: in its last steps a
share `sft_noise` (0.65 in the preset) of the calls name a tool that does not exist (`calc`),
after which the answer is a guess. Above one half the greedy episode calls the wrong tool
(held-out accuracy near 0) while sampled episodes often succeed: RL with the exact-match
reward has one token to fix and raises both held-out accuracy and tool-call success. The
tokenizer keeps one token per character, plus one per lowercase word of the tool-call format
(as subword vocabularies do) and the four tool tags, so episodes stay short on two CPU cores.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

from asyncrl.launch.tiny import (
    BOS,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    TinyTaskConfig,
    corrupt_answer,
    sft_optimizer,
    tiny_model_config,
)

log = logging.getLogger(__name__)

TOOL_TAGS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
WORDS = (
    "name",
    "arguments",
    "expression",
    "calculator",
    "calc",
    "error",
    "unknown",
    "tool",
    "tools",
)
CHARS = "0123456789+-*/%()=., :{}\"'_"
WRONG_TOOL = "calc"
# Prompt, call, result and answer fit in this many positions (with room for a second call).
MAX_POSITIONS = 160

# User turns as they are (the prompt), an assistant turn closed by EOS, a tool result wrapped
# in its tags; `tools` are known to the model from its warm start, so they are not rendered.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}{{ m['content'] }}" + EOS + ""
    "{%- elif m['role'] == 'tool' -%}<tool_response>{{ m['content'] }}</tool_response>"
    "{%- else -%}{{ m['content'] }}{%- endif -%}"
    "{%- endfor -%}"
)


def build_agent_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in (*SPECIAL_TOKENS, *TOOL_TAGS, *WORDS, *CHARS, *"abcdefghijklmnopqrstuvwxyz"):
        vocab.setdefault(tok, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # A known lowercase word is one token; an unknown one maps to <unk>; anything else is a
    # character. Special tokens and tool tags are matched before this split.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[a-z_]+|."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(TOOL_TAGS),
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tool_call_text(expression: str, tool: str = "calculator") -> str:
    args = json.dumps({"expression": expression}, separators=(",", ":"))
    return f'<tool_call>{{"name":"{tool}","arguments":{args}}}</tool_call>'


def make_agent_splits(cfg: TinyTaskConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, eval, sft) rows of distinct random problems, a pure function of the config."""
    rng = random.Random(cfg.seed)
    need = cfg.n_train + cfg.n_eval + cfg.n_sft
    seen: set[tuple[int, str, int]] = set()
    rows = []
    while len(rows) < need:
        a = rng.randint(cfg.operand_min, cfg.operand_max)
        b = rng.randint(cfg.operand_min, cfg.operand_max)
        op = rng.choice(sorted(set(cfg.ops)))
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append({"prompt": f"{a}{op}{b}=", "answer": str(value)})
    e, t = cfg.n_eval, cfg.n_train
    return rows[e : e + t], rows[:e], rows[e + t :]


class Trajectories:
    """Warm-start episodes rendered by the generators' own tool environment and renderer:
    token ids and labels (-100 on prompt and tool tokens, as RL masks them)."""

    def __init__(self, tokenizer):
        from asyncrl.generators.envs.render import ChatRenderer
        from asyncrl.generators.envs.tool_env import ToolEnvironment
        from asyncrl.generators.envs.tools import calculator

        self.tok = tokenizer
        self.env = ToolEnvironment([calculator])
        self.renderer = ChatRenderer(tokenizer, self.env.tool_schemas)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def episode(self, row: dict, wrong_tool: bool, rng: random.Random):
        eos = self.tok.eos_token_id
        prompt = self._ids(row["prompt"])
        call = tool_call_text(row["prompt"].rstrip("="), WRONG_TOOL if wrong_tool else "calculator")
        turn1 = self._ids(call) + [eos]
        self.env.reset(row)
        result = self.env.step({"role": "assistant", "content": call})
        ok = result.tool_calls == [("calculator", "ok")]
        if ok == wrong_tool:
            raise RuntimeError(f"tiny agent task: unexpected tool outcome {result.tool_calls}")
        obs = [int(t) for t in self.renderer.observation_ids(result.observations)]
        answer = row["answer"] if ok else corrupt_answer(row["answer"], rng)
        turn2 = self._ids(answer) + [eos]
        ids = prompt + turn1 + obs + turn2
        labels = [-100] * len(prompt) + turn1 + [-100] * len(obs) + turn2
        return ids, labels


def _batch(pairs, pad: int):
    import torch

    width = max(len(ids) for ids, _ in pairs)
    ids_t = torch.full((len(pairs), width), pad, dtype=torch.long)
    lab_t = torch.full((len(pairs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        lab_t[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return ids_t, mask, lab_t


def _warm_start(cfg: TinyTaskConfig, tokenizer, sft_rows: list[dict]):
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    config = tiny_model_config(cfg, vocab_size=len(tokenizer))
    config.max_position_embeddings = MAX_POSITIONS
    model = Qwen2ForCausalLM(config)
    opt, sched = sft_optimizer(model, cfg)
    traj = Trajectories(tokenizer)
    rng = random.Random(cfg.seed + 1)
    model.train()
    t0 = time.monotonic()
    for step in range(cfg.sft_steps):
        noisy = step >= cfg.sft_steps - cfg.sft_noise_steps
        pairs = [
            traj.episode(row, noisy and rng.random() < cfg.sft_noise, rng)
            for row in rng.sample(sft_rows, cfg.sft_batch_size)
        ]
        ids, mask, lab = _batch(pairs, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == cfg.sft_steps:
            log.info(
                "tiny agent SFT step %d/%d loss %.4f (%.1fs)",
                step + 1,
                cfg.sft_steps,
                loss.item(),
                time.monotonic() - t0,
            )
    return model.eval()


def build_agent(cfg: TinyTaskConfig, out: Path) -> None:
    """Every asset of the agent task into `out` (called by `tiny.setup_tiny_assets`)."""
    import torch

    train, held_out, sft = make_agent_splits(cfg)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held_out)):
        with open(out / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    tokenizer = build_agent_tokenizer()
    prev = torch.get_num_threads()
    if cfg.sft_threads:
        torch.set_num_threads(cfg.sft_threads)
    try:
        model = _warm_start(cfg, tokenizer, sft)
    finally:
        torch.set_num_threads(prev)
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    (out / "task.json").write_text(
        json.dumps({"task": "agent", "config": cfg.model_dump(exclude={"cache_dir"})}, indent=2)
    )
