"""The environment interface: what runs between model turns of a multi-turn episode.

An environment starts an episode from a dataset row (`reset`) and answers each assistant
message (`step`) with observation messages (chat messages, usually `tool` results), whether
the episode is done, and an optional per-turn reward. The generator turns observations into
tokens with the chat template (`render.py`) and keeps one token sequence per episode
(`episode.py`); environments never see token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

ChatMessage = dict[str, Any]

# Outcomes of one tool call (a bounded label set for the tool-call counter).
TOOL_OUTCOMES = ("ok", "error", "timeout")


@dataclass
class StepResult:
    """What the environment says after one assistant message.

    `finish_reason`: when set, the episode ends with it (e.g. `tool_timeout`) whatever
    `done` says. `tool_calls`: (tool label, outcome) of each call this step made, for
    metrics; labels come from a bounded set (configured tool names, `unknown`, `malformed`)."""

    observations: list[ChatMessage]
    done: bool
    reward: float | None = None
    finish_reason: str | None = None
    tool_calls: list[tuple[str, str]] = field(default_factory=list)


class Environment(Protocol):
    """One episode at a time; a new episode begins with `reset`."""

    # JSON schemas of the tools the model may call (the chat template's `tools=`); empty for
    # environments without tools.
    tool_schemas: list[dict]

    def reset(self, row: dict) -> list[ChatMessage]:
        """Start an episode for `row`; returns its initial messages."""
        ...

    def step(self, message: ChatMessage) -> StepResult:
        """React to one assistant message (`{"role": "assistant", "content": text}`)."""
        ...

    def close(self) -> None: ...


def initial_messages(row: dict, prompt_field: str = "prompt") -> list[ChatMessage]:
    """A row's prompt as chat messages: a message list as it is, a string as one user turn."""
    value = row.get(prompt_field, "")
    if isinstance(value, list):
        return [dict(m) for m in value]
    return [{"role": "user", "content": str(value)}]
