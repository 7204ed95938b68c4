"""Tools as plain typed Python functions: their JSON schemas, and tool calls parsed from the
model's text.

A tool is a function with type hints and a docstring; `function_schema` turns it into the
JSON schema chat templates take as `tools=` (the OpenAI function format that TRL and verl
also accept). Calls are parsed in the Qwen/Hermes format, `<tool_call>{"name": ...,
"arguments": {...}}</tool_call>`, several per turn allowed; anything that does not parse is a
`MalformedCall` that the environment answers with an error message, never an exception.
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
OPEN_TAG = "<tool_call>"
# A call's JSON beyond this is refused before json.loads sees it.
MAX_CALL_CHARS = 8192

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


class ToolTimeout(Exception):
    """A tool ran past its time limit; the episode ends with finish reason `tool_timeout`."""


def _type_schema(hint: Any) -> dict:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin is Literal:
        return {"type": _JSON_TYPES[type(args[0])], "enum": list(args)}
    if origin in (list, tuple) or hint in (list, tuple):
        return {"type": "array", **({"items": _type_schema(args[0])} if args else {})}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _type_schema(inner[0])
    raise TypeError(f"no JSON schema for the type {hint!r}")


def _doc_parts(doc: str) -> tuple[str, dict[str, str]]:
    """The description (text before `Args:`) and each argument's description from a
    Google-style `Args:` section."""
    doc = inspect.cleandoc(doc or "")
    head, _, rest = doc.partition("\nArgs:")
    params: dict[str, str] = {}
    name = None
    for line in rest.splitlines():
        m = re.match(r"\s{0,8}(\w+)\s*(?:\([^)]*\))?:\s*(.*)", line)
        if m and not line.startswith(" " * 9):
            name = m.group(1)
            params[name] = m.group(2).strip()
        elif name and line.strip():
            if re.match(r"^(Returns|Raises|Yields):", line.strip()):
                break
            params[name] = (params[name] + " " + line.strip()).strip()
    return " ".join(head.split()), params


def function_schema(fn: Callable) -> dict:
    """`{"type": "function", "function": {name, description, parameters}}` from `fn`'s
    signature, type hints and docstring. Every parameter needs a hint; a parameter without a
    default is required. TypeError for what JSON schema cannot say."""
    hints = typing.get_type_hints(fn)
    description, docs = _doc_parts(fn.__doc__ or "")
    if not description:
        raise TypeError(f"tool {fn.__name__}: needs a docstring (the model reads it)")
    props: dict[str, dict] = {}
    required: list[str] = []
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__}: *args/**kwargs have no schema")
        if name not in hints:
            raise TypeError(f"tool {fn.__name__}: parameter {name!r} has no type hint")
        prop = _type_schema(hints[name])
        if name in docs:
            prop["description"] = docs[name]
        props[name] = prop
        if p.default is inspect.Parameter.empty:
            required.append(name)
    return {
        "type": "function",
        "function": {
            "name": fn.__name__,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


@dataclass(frozen=True)
class MalformedCall:
    reason: str


def parse_tool_calls(text: str, max_calls: int = 8) -> list[ToolCall | MalformedCall]:
    """Every `<tool_call>...</tool_call>` of `text` in order (at most `max_calls`; more is one
    MalformedCall), plus a MalformedCall for an opening tag left unclosed."""
    out: list[ToolCall | MalformedCall] = []
    bodies = CALL_RE.findall(text)
    for body in bodies[:max_calls]:
        out.append(_parse_one(body))
    if len(bodies) > max_calls:
        out.append(MalformedCall(f"more than {max_calls} tool calls in one turn"))
    if text.count(OPEN_TAG) > len(bodies):
        out.append(MalformedCall("<tool_call> without </tool_call>"))
    return out


def _parse_one(body: str) -> ToolCall | MalformedCall:
    if len(body) > MAX_CALL_CHARS:
        return MalformedCall(f"tool call longer than {MAX_CALL_CHARS} characters")
    try:
        obj = json.loads(body)
    except ValueError as e:  # JSONDecodeError, and RecursionError's kin for deep nesting
        return MalformedCall(f"tool call is not JSON ({e.msg if hasattr(e, 'msg') else e})")
    except RecursionError:
        return MalformedCall("tool call nested too deeply")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return MalformedCall("tool call needs a string 'name'")
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some templates emit arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return MalformedCall("tool call 'arguments' is not a JSON object")
    if not isinstance(args, dict):
        return MalformedCall("tool call 'arguments' must be an object")
    return ToolCall(obj["name"], args)


# ------------------------------------------------------------------ built-in tools
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPRESSION_CHARS = 256
_MAX_MAGNITUDE = 10**100


def _eval_node(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise ValueError("exponent or base too large")
        value = _BINOPS[type(node.op)](left, right)
        if abs(value) > _MAX_MAGNITUDE:
            raise ValueError("result too large")
        return value
    raise ValueError(f"unsupported expression element {type(node).__name__}")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, e.g. "12345+67890".
    """
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError("not an arithmetic expression") from None
    value = _eval_node(tree.body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)
