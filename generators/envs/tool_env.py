"""The built-in tool environment: the model calls typed Python functions between its turns.

An assistant message with tool calls gets one `tool` message per call (the result, or
`error: ...` for a malformed call, an unknown tool, bad arguments or a tool that failed);
one without tool calls is the final answer and ends the episode. A tool past its time limit
ends the episode with finish reason `tool_timeout`. Tools run in this process, one call at a
time; the sandboxed `python` tool runs its code in a limited subprocess (`sandbox.py`), and
an in-process tool is timed after it returns (keep such tools quick, or put them behind the
sandbox).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from asyncrl.generators.envs.base import ChatMessage, StepResult, initial_messages
from asyncrl.generators.envs.sandbox import SandboxError
from asyncrl.generators.envs.tools import (
    MalformedCall,
    ToolCall,
    ToolTimeout,
    function_schema,
    parse_tool_calls,
)

# Tool-call labels for calls that name no configured tool.
UNKNOWN, MALFORMED = "unknown", "malformed"
# What a tool's result may add to the episode, in characters, before it is cut.
MAX_RESULT_CHARS = 4096


class ToolEnvironment:
    def __init__(
        self,
        tools: list[Callable],
        timeout_seconds: float = 10.0,
        max_calls_per_turn: int = 4,
        prompt_field: str = "prompt",
    ):
        self.tools = {fn.__name__: fn for fn in tools}
        if len(self.tools) != len(tools):
            raise ValueError("two tools share a name")
        self.tool_schemas = [function_schema(fn) for fn in tools]
        self.timeout_seconds = timeout_seconds
        self.max_calls_per_turn = max_calls_per_turn
        self.prompt_field = prompt_field

    @property
    def labels(self) -> tuple[str, ...]:
        """Every tool label `step` can report (bounded: for metric labels)."""
        return (*self.tools, UNKNOWN, MALFORMED)

    def reset(self, row: dict) -> list[ChatMessage]:
        return initial_messages(row, self.prompt_field)

    def step(self, message: ChatMessage) -> StepResult:
        calls = parse_tool_calls(str(message.get("content", "")), self.max_calls_per_turn)
        if not calls:
            return StepResult([], done=True)
        result = StepResult([], done=False)
        for call in calls:
            name, content, outcome = self._call(call)
            result.observations.append({"role": "tool", "name": name, "content": content})
            result.tool_calls.append((name if name in self.tools else UNKNOWN, outcome))
            if isinstance(call, MalformedCall):
                result.tool_calls[-1] = (MALFORMED, outcome)
            if outcome == "timeout":
                result.done, result.finish_reason = True, "tool_timeout"
                break
        return result

    def _call(self, call: ToolCall | MalformedCall) -> tuple[str, str, str]:
        """(tool name, message content, outcome)."""
        if isinstance(call, MalformedCall):
            return MALFORMED, f"error: {call.reason}", "error"
        fn = self.tools.get(call.name)
        if fn is None:
            known = ", ".join(self.tools)
            return call.name[:64], f"error: unknown tool {call.name[:64]} (tools: {known})", "error"
        t0 = time.monotonic()
        try:
            value = fn(**call.arguments)
        except ToolTimeout as e:
            return call.name, f"error: timed out ({e})", "timeout"
        except SandboxError as e:
            return call.name, f"error: {e}"[:MAX_RESULT_CHARS], "error"
        except TypeError as e:
            # Bad arguments (missing, unexpected): the model's mistake, told to it.
            return call.name, f"error: bad arguments ({e})"[:MAX_RESULT_CHARS], "error"
        except (ValueError, ArithmeticError, OverflowError) as e:
            return call.name, f"error: {e}"[:MAX_RESULT_CHARS], "error"
        if time.monotonic() - t0 > self.timeout_seconds:
            return call.name, "error: timed out", "timeout"
        return call.name, str(value)[:MAX_RESULT_CHARS], "ok"

    def close(self) -> None:
        pass
