"""Stand-ins for Slurm's `srun` and for the Python a job step runs, to test the batch script's
plumbing without Slurm (`test_slurm_recipe.py`).

`srun` (argv[1] == "srun"): records its options and the step's environment as one JSON line in
$FAKE_SLURM_LOG, then runs the step's command once per task, the way slurmd would set
SLURMD_NODENAME and SLURM_LOCALID. `python` (argv[1] == "python"): records its arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _log(record: dict) -> None:
    with open(os.environ["FAKE_SLURM_LOG"], "a") as f:
        f.write(json.dumps(record) + "\n")


def srun(argv: list[str]) -> int:
    options: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        key, _, value = argv[i][2:].partition("=")
        options[key] = value
        i += 1
    command = argv[i:]
    _log({"srun": options, "learner_env": os.environ.get("ASYNCRL_LEARNER"), "argv": command})
    code = 0
    for task in range(int(options.get("ntasks", "1"))):
        env = dict(os.environ, SLURMD_NODENAME=options["nodelist"], SLURM_LOCALID=str(task))
        code = max(code, subprocess.run(command, env=env).returncode)
    return code


if __name__ == "__main__":
    if sys.argv[1] == "srun":
        sys.exit(srun(sys.argv[2:]))
    _log({"python": sys.argv[2:]})
