"""The sandboxed python tool: code that loops forever, allocates too much or reaches for the
network is stopped and reported, never hangs or harms the generator."""

from __future__ import annotations

import time

import pytest

from asyncrl.generators.envs.sandbox import (
    SandboxError,
    SandboxLimits,
    network_isolated,
    python_tool,
    run_python,
)
from asyncrl.generators.envs.tool_env import ToolEnvironment
from asyncrl.generators.envs.tools import ToolTimeout

LIMITS = SandboxLimits(cpu_seconds=1, memory_bytes=256 << 20, wall_seconds=5)


def test_prints_come_back():
    assert run_python("print(6 * 7)", LIMITS) == "42\n"
    with pytest.raises(SandboxError, match="ZeroDivisionError"):
        run_python("1 / 0", LIMITS)


def test_endless_loop_is_stopped_by_the_cpu_limit():
    # RLIMIT_CPU of 1 s (SIGXCPU) ends it, not the 5 s wall clock (the message says which).
    with pytest.raises(ToolTimeout, match="CPU"):
        run_python("while True:\n    pass", LIMITS)


def test_sleeping_code_is_stopped_by_the_wall_clock():
    limits = SandboxLimits(cpu_seconds=5, wall_seconds=0.5)
    t = time.monotonic()
    with pytest.raises(ToolTimeout, match="wall"):
        run_python("import time\ntime.sleep(30)", limits)
    assert time.monotonic() - t < 3


def test_big_allocation_fails_inside_the_sandbox():
    # 1 GiB against a 256 MiB address-space limit: MemoryError in the child, reported.
    with pytest.raises(SandboxError, match="MemoryError"):
        run_python("x = bytearray(1 << 30)", LIMITS)


def test_network_is_unreachable():
    if not network_isolated():
        pytest.skip("no unprivileged network namespaces here (the tool logs this at start)")
    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(2)\n"
        "print(s.connect_ex(('1.1.1.1', 53)))\n"
    )
    # In a fresh network namespace there is no route: ENETUNREACH (101), never a connection.
    assert run_python(code, LIMITS).strip() == "101"


def test_python_tool_in_the_environment_reports_outcomes():
    env = ToolEnvironment([python_tool(LIMITS)])
    ok = '<tool_call>{"name": "python", "arguments": {"code": "print(1+1)"}}</tool_call>'
    r = env.step({"role": "assistant", "content": ok})
    assert r.observations[0]["content"] == "2\n" and r.tool_calls == [("python", "ok")]
    loop = '<tool_call>{"name": "python", "arguments": {"code": "while 1: pass"}}</tool_call>'
    r = env.step({"role": "assistant", "content": loop})
    assert r.finish_reason == "tool_timeout" and r.tool_calls == [("python", "timeout")]
