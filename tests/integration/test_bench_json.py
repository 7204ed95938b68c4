"""`asyncrl bench --json` prints one JSON object on stdout and nothing else: DeepSpeed's
accelerator notice and op-build lines, printed while the objective section imports it, go to
stderr."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_json_stdout_is_only_json():
    proc = subprocess.run(
        [sys.executable, "-m", "asyncrl.launch.cli", "bench", "--json", "--quick"]
        + ["--only", "objective", "--log-level", "WARNING"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # the whole of stdout: one object
    assert result["quick"] is True and 0 < result["objective_overhead"] < 1
