"""The sandboxed Python tool: model-written code runs in a separate, limited process.

Each call starts a fresh interpreter (`python -I -S`, code on stdin) in its own session,
which sets itself RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space), RLIMIT_FSIZE (bytes it
may write to a file) and RLIMIT_NOFILE before the code runs; its whole process group is
killed at the wall-clock limit. Network: where unprivileged user namespaces work
(`unshare -rn`, checked once), the child runs in a fresh network namespace with only a
loopback interface, so it reaches no host; where they do not, there is no network isolation
and `network_isolated()` says so (the host's own policy applies). The working directory is a
fresh temporary one. A resource sandbox for honest mistakes (endless loops, huge
allocations), not a security boundary against a hostile model: use a container or gVisor.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from asyncrl.generators.envs.tools import ToolTimeout


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 5
    memory_bytes: int = 512 << 20
    wall_seconds: float = 10.0
    output_chars: int = 4096
    file_bytes: int = 1 << 20
    isolate_network: bool = True


class SandboxError(Exception):
    """The code failed (exit status, exception, memory); the message is what the model sees."""


@functools.lru_cache(maxsize=1)
def network_isolated() -> bool:
    """Whether `unshare -rn` works here (a user and a network namespace, no privileges)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# Runs in the child before the model's code: the limits are set by the child itself rather
# than in a preexec_fn, which is unsafe in a process with threads (the generator has some).
_PREAMBLE = """
import resource, sys
cpu, mem, fsize = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
del resource, cpu, mem, fsize
sys.argv = ["-"]
exec(compile(sys.stdin.read(), "<code>", "exec"), {"__name__": "__main__"})
"""


def run_python(code: str, limits: SandboxLimits) -> str:
    """Run `code`; its stdout (cut to `output_chars`). SandboxError when it fails (with the
    last lines of stderr), ToolTimeout past the CPU or wall-clock limit."""
    cpu = str(max(1, int(limits.cpu_seconds)))
    cmd = [sys.executable, "-I", "-S", "-c", _PREAMBLE, cpu]
    cmd += [str(limits.memory_bytes), str(limits.file_bytes)]
    if limits.isolate_network and network_isolated():
        cmd = [shutil.which("unshare") or "unshare", "-rn", *cmd]
    with tempfile.TemporaryDirectory(prefix="asyncrl-sandbox-") as cwd:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"},
            start_new_session=True,  # its own process group, killed as one
        )
        try:
            out, err = proc.communicate(code.encode(), timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise ToolTimeout(f"wall-clock limit of {limits.wall_seconds:g}s") from None
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise ToolTimeout(f"CPU limit of {limits.cpu_seconds}s")
    text = out.decode("utf-8", "replace")[: limits.output_chars]
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise SandboxError("\n".join(tail)[-limits.output_chars :] or f"exit {proc.returncode}")
    return text


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def python_tool(limits: SandboxLimits):
    """The `python` tool for the tool environment, bound to `limits`."""

    def python(code: str) -> str:
        """Run Python code in a sandbox (no network, limited CPU time and memory) and return
        what it prints.

        Args:
            code: A complete Python program; print the values you need.
        """
        return run_python(code, limits)

    return python
