"""Tool environments without a model: JSON schemas from typed functions, tool-call parsing
(valid, malformed, several per turn), the calculator, and the tool environment's answers."""

from __future__ import annotations

from typing import Literal

from asyncrl.generators.envs.tool_env import ToolEnvironment
from asyncrl.generators.envs.tools import (
    MalformedCall,
    ToolCall,
    ToolTimeout,
    calculator,
    function_schema,
    parse_tool_calls,
)


def lookup(city: str, days: int, units: Literal["c", "f"] = "c", exact: bool | None = None):
    """Weather forecast for a city.

    Args:
        city: The city's name.
        days: How many days ahead,
            counted from today.
        units: Temperature units.
        exact: Unused.
    """


def test_schema_from_typed_function():
    # Hand-derived: every hinted parameter becomes a property of its JSON type; Literal gives an
    # enum; `X | None` is X; only parameters without a default are required; the Args section
    # supplies descriptions (continuation lines joined); the first paragraph is the description.
    assert function_schema(lookup) == {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Weather forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city's name."},
                    "days": {
                        "type": "integer",
                        "description": "How many days ahead, counted from today.",
                    },
                    "units": {
                        "type": "string",
                        "enum": ["c", "f"],
                        "description": "Temperature units.",
                    },
                    "exact": {"type": "boolean", "description": "Unused."},
                },
                "required": ["city", "days"],
            },
        },
    }


def test_schema_refuses_untyped_and_undocumented():
    def untyped(x):
        """Doc."""

    def undocumented(x: int):
        pass

    for fn in (untyped, undocumented):
        try:
            function_schema(fn)
        except TypeError:
            continue
        raise AssertionError(f"{fn.__name__} was accepted")


def test_parse_valid_and_several_calls():
    text = (
        'thinking <tool_call>{"name": "calculator", "arguments": {"expression": "1+2"}}</tool_call>'
        '\n<tool_call>\n{"name": "lookup", "arguments": "{\\"city\\": \\"Oslo\\"}"}\n</tool_call>'
    )
    # Two calls in order; arguments given as a JSON string (some templates) are decoded.
    assert parse_tool_calls(text) == [
        ToolCall("calculator", {"expression": "1+2"}),
        ToolCall("lookup", {"city": "Oslo"}),
    ]
    assert parse_tool_calls("the answer is 3") == []


def test_parse_malformed_calls():
    cases = {
        "<tool_call>{not json}</tool_call>": "not JSON",
        '<tool_call>{"arguments": {}}</tool_call>': "string 'name'",
        '<tool_call>["calculator"]</tool_call>': "string 'name'",
        '<tool_call>{"name": "c", "arguments": [1]}</tool_call>': "must be an object",
        '<tool_call>{"name": "c", "arguments": {}}': "without </tool_call>",
        "<tool_call>" + "[" * 100000 + "</tool_call>": "longer than",
    }
    for text, why in cases.items():
        (got,) = parse_tool_calls(text)
        assert isinstance(got, MalformedCall) and why in got.reason, (text[:40], got)
    # Beyond max_calls: the first ones run, the excess is one malformed entry.
    many = '<tool_call>{"name": "c", "arguments": {}}</tool_call>' * 3
    got = parse_tool_calls(many, max_calls=2)
    assert got[:2] == [ToolCall("c", {})] * 2 and isinstance(got[2], MalformedCall)


def test_calculator_exact_and_bounded():
    assert calculator("12345+67890") == "80235"
    assert calculator("(2+3)*4 - 7/7") == "19"
    for bad in ("__import__('os')", "2**10000", "1/0", "x" * 300):
        try:
            calculator(bad)
        except (ValueError, ZeroDivisionError):
            continue
        raise AssertionError(f"{bad[:20]!r} evaluated")


def slow(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: How long.
    """
    raise ToolTimeout("stopped")


def test_tool_environment_answers_and_labels():
    env = ToolEnvironment([calculator, slow], timeout_seconds=5)
    assert [s["function"]["name"] for s in env.tool_schemas] == ["calculator", "slow"]
    assert env.reset({"prompt": "1+2="}) == [{"role": "user", "content": "1+2="}]
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+2"}}</tool_call>'
    bad_args = '<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>'
    other = '<tool_call>{"name": "search", "arguments": {}}</tool_call>'
    r = env.step({"role": "assistant", "content": call + bad_args + other + "<tool_call>x"})
    assert not r.done and r.finish_reason is None
    assert [m["content"] for m in r.observations][0] == "3"
    assert r.observations[1]["content"].startswith("error: bad arguments")
    assert r.observations[2]["content"].startswith("error: unknown tool search")
    assert r.observations[3]["content"].startswith("error: <tool_call> without")
    assert r.tool_calls == [
        ("calculator", "ok"),
        ("calculator", "error"),
        ("unknown", "error"),
        ("malformed", "error"),
    ]
    # No call: the final answer, the episode is done.
    assert env.step({"role": "assistant", "content": "3"}).done
    # A tool past its limit ends the episode with tool_timeout.
    slow_call = '<tool_call>{"name": "slow", "arguments": {"seconds": 99}}</tool_call>'
    r = env.step({"role": "assistant", "content": slow_call + call})
    assert r.done and r.finish_reason == "tool_timeout"
    assert r.tool_calls == [("slow", "timeout")]  # the calls after it do not run
