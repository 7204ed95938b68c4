"""Observation messages to tokens with the tokenizer's chat template, appended to the
episode's token sequence as they are (token-in/token-out: earlier turns are never
re-tokenised, so the tokens trained on are the tokens sampled).

The template renders whole conversations, so the tokens of new messages are the difference
between a reference conversation rendered with and without them (the reference ends with an
assistant turn, as the episode does when an observation follows). A model's turn ends at its
stop token, but templates may put text after it (Qwen: a newline) that the model never
generated: that glue is prepended to each observation so the sequence reads as the template
would render it.
"""

from __future__ import annotations

import numpy as np

from asyncrl.generators.envs.base import ChatMessage

_REFERENCE = [
    {"role": "user", "content": "1"},
    {"role": "assistant", "content": "2"},
]


class ChatRenderer:
    def __init__(self, tokenizer, tools: list[dict] | None = None, eos_id: int | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "multi-turn environments need a tokenizer with a chat template (to render "
                "tool results as the model expects them)"
            )
        self.tokenizer = tokenizer
        self.tools = tools or None
        self.eos_id = eos_id if eos_id is not None else tokenizer.eos_token_id
        self._base = self._render(_REFERENCE, generation_prompt=False)
        stop = tokenizer.decode([self.eos_id]) if self.eos_id is not None else ""
        at = self._base.rfind(stop) if stop else -1
        self._glue = self._base[at + len(stop) :] if at >= 0 else ""
        # Fails at start, not in the middle of a run, for a template that renders the earlier
        # turns differently once a tool message follows.
        self.observation_text([{"role": "tool", "name": "t", "content": "0"}])

    def _render(self, messages: list[ChatMessage], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=self.tools, tokenize=False, add_generation_prompt=generation_prompt
        )

    def observation_text(self, messages: list[ChatMessage]) -> str:
        full = self._render(_REFERENCE + list(messages), generation_prompt=True)
        if not full.startswith(self._base):
            raise ValueError(
                "the chat template renders earlier turns differently after a tool message"
            )
        return self._glue + full[len(self._base) :]

    def observation_ids(self, messages: list[ChatMessage]) -> np.ndarray:
        text = self.observation_text(messages)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return np.asarray(ids, dtype=np.int32)

    def turn_text(self, tokens: np.ndarray) -> str:
        """A model turn's text as the environment reads it: up to its stop token, with special
        tokens kept (tool-call tags may be special tokens)."""
        ids = [int(t) for t in tokens]
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=False)
