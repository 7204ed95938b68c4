"""The `env` section: which environment runs between model turns, its tools and limits."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from asyncrl.protocol.settings import StrictModel

BUILTIN_TOOLS = ("calculator", "python")
_PLUGIN = re.compile(r"^[\w./-]+(\.py)?:\w+$")


class PythonToolConfig(StrictModel):
    """Limits of the sandboxed `python` tool (each call is a fresh subprocess)."""

    cpu_seconds: int = Field(5, ge=1, description="CPU time a call may use (RLIMIT_CPU).")
    memory_mb: int = Field(
        512, ge=16, description="Address space a call may map (RLIMIT_AS), in MiB."
    )
    wall_seconds: float = Field(
        10.0, gt=0, description="Wall-clock limit; past it the call's process group is killed."
    )
    output_chars: int = Field(4096, ge=1, description="Printed output kept per call.")
    isolate_network: bool = Field(
        True,
        description="Run calls in a fresh network namespace (`unshare -rn`) where unprivileged "
        "user namespaces work; elsewhere there is no network isolation (logged at start).",
    )


class EnvConfig(StrictModel):
    """Multi-turn rollouts: the generator runs an environment between model turns."""

    name: str = Field(
        "none",
        description="none = single-turn rollouts; tool = the built-in tool environment "
        "(env.tools); or a plug-in `module:Class` / `path/file.py:Class`, constructed as "
        "Class(**env.options) and implementing reset(row) and step(message) "
        "(generators/envs/base.py).",
    )
    tools: list[str] = Field(
        default_factory=lambda: ["calculator"],
        description="Tools of env.name=tool: built-ins (calculator, python) or typed Python "
        "functions as `module:function` / `path/file.py:function`; their type hints and "
        "docstrings become the JSON schemas passed to the chat template (tools=).",
    )
    max_turns: int = Field(
        4, ge=1, description="Model turns per episode; past them it ends with `max_turns`."
    )
    max_turn_tokens: int = Field(
        0,
        ge=0,
        description="Tokens one model turn may generate; 0 = the rest of the episode budget "
        "(sampling.max_new_tokens counts every response token of an episode, environment "
        "tokens included; past it the episode ends with `budget`).",
    )
    tool_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time limit of one in-process tool call (timed after it returns); a call "
        "past it, or a python call past its own limits, ends the episode with `tool_timeout`.",
    )
    max_calls_per_turn: int = Field(
        4, ge=1, description="Tool calls run per model turn; more are answered with an error."
    )
    python: PythonToolConfig = Field(
        default_factory=PythonToolConfig, description="The sandboxed python tool's limits."
    )
    options: dict = Field(
        default_factory=dict, description="Keyword arguments of a plug-in environment's class."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v not in ("none", "tool") and not _PLUGIN.match(v):
            raise ValueError("env.name must be none, tool, or module:Class / path/file.py:Class")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[str]) -> list[str]:
        for t in v:
            if t not in BUILTIN_TOOLS and not _PLUGIN.match(t):
                raise ValueError(
                    f"env.tools: {t!r} is neither a built-in ({', '.join(BUILTIN_TOOLS)}) nor "
                    "module:function / path/file.py:function"
                )
        if len(set(v)) != len(v):
            raise ValueError("env.tools lists a tool twice")
        return v

    @property
    def enabled(self) -> bool:
        return self.name != "none"
