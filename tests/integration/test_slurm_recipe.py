"""The Slurm batch script (`launch/recipes/slurm/asyncrl.sbatch`).

Its plumbing, everywhere: with stand-ins for `srun`, `scontrol` and Python, the learner step
goes to the allocation's first node through torchrun, one generator step to each other node
with one process per task, and every generator connects to the learner's address from the
environment under an id and metrics port of its own.

Then for real where Slurm's daemons are installed (`.ci/run` installs them as root): a
single-node cluster (slurmctld + slurmd on this host, no munge) runs the script on the tiny
task; the learner finishes and its generator, sharing the node, exits with it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncrl.protocol.sockets import free_ports
from tests.integration.conftest import REPO

SCRIPT = REPO / "launch" / "recipes" / "slurm" / "asyncrl.sbatch"


def _stand_ins(tmp_path: Path) -> tuple[dict, Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    fake = Path(__file__).with_name("fake_srun.py")
    (bin_dir / "srun").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" srun "$@"\n')
    (bin_dir / "python-stand-in").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{fake}" python "$@"\n'
    )
    # `scontrol show hostnames n0,n1,n2`: one name a line.
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$3" | tr , "\\n"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_SLURM_LOG=str(log),
        SLURM_JOB_ID="7",
        ASYNCRL_PYTHON=str(bin_dir / "python-stand-in"),
        ASYNCRL_OUTPUT_DIR=str(tmp_path / "run"),
        ASYNCRL_LEARNER_PROCS="4",
        ASYNCRL_GENERATORS_PER_NODE="2",
        ASYNCRL_CURVE_DIR="/shared/keys",
    )
    return env, log


def test_steps_and_addresses_from_the_environment(tmp_path):
    env, log = _stand_ins(tmp_path)
    env["SLURM_JOB_NODELIST"] = "n0,n1,n2"
    done = subprocess.run(
        ["bash", str(SCRIPT), "train.steps=9"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [c for c in calls if "srun" in c]
    pythons = [c["python"] for c in calls if "python" in c]
    # One learner step on n0 and one generator step on each other node, all told the address.
    assert sorted(s["srun"]["nodelist"] for s in steps) == ["n0", "n1", "n2"]
    assert {s["learner_env"] for s in steps} == {"tcp://n0:5555"}
    assert all("overlap" not in s["srun"] for s in steps)  # nodes of their own
    learner = [p for p in pythons if "learner" in p]
    assert len(learner) == 1
    # torchrun over the node's ranks, then the learner bound for other hosts, its output and
    # keys from the environment, the user's override last (it wins).
    args = learner[0]
    assert args[:4] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert args[4:8] == ["-m", "asyncrl.launch.cli", "learner", "--config"]
    assert "learner.bind_host=0.0.0.0" in args and "--resume" not in args
    assert f"learner.output_dir={tmp_path / 'run'}" in args
    assert "security.curve_dir=/shared/keys" in args and args[-1] == "train.steps=9"
    # 2 generators on each of n1 and n2: distinct ids and metrics ports, the learner's address.
    gens = [p for p in pythons if "generator" in p]
    assert len(gens) == 4
    ids = sorted(next(a for a in g if a.startswith("generator.generator_id=")) for g in gens)
    assert ids == [f"generator.generator_id={n}-{k}" for n in ("n1", "n2") for k in (0, 1)]
    ports = {next(a for a in g if a.startswith("generator.metrics_port=")) for g in gens}
    assert ports == {"generator.metrics_port=9401", "generator.metrics_port=9402"}
    for g in gens:
        assert g[g.index("--learner") + 1] == "tcp://n0:5555"
        assert "security.client_name=gen" in g and g[-1] == "train.steps=9"


def test_one_node_shares_it_and_a_checkpoint_resumes(tmp_path):
    env, log = _stand_ins(tmp_path)
    env["SLURM_JOB_NODELIST"] = "solo"
    env.pop("ASYNCRL_CURVE_DIR")
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint" / "latest").write_text("v4")
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [c for c in calls if "srun" in c]
    assert [s["srun"]["nodelist"] for s in steps] == ["solo", "solo"]
    assert all("overlap" in s["srun"] for s in steps)  # the steps share the one node
    pythons = [c["python"] for c in calls if "python" in c]
    assert "--resume" in next(p for p in pythons if "learner" in p)
    assert not any(a.startswith("security.") for p in pythons for a in p)


# ------------------------------------------------------------------ a real Slurm, one node

SLURM_MISSING = [t for t in ("slurmctld", "slurmd", "sbatch", "sinfo") if not shutil.which(t)]


def _consecutive_free_ports(*runs: int) -> list[int]:
    """The first port of each run of consecutive TCP ports (one run per length in `runs`),
    free right now and disjoint. Bases come from `free_ports`, outside the kernel's ephemeral
    range, so no outgoing connection takes one before the daemon or role that owns it binds."""
    bases: list[int] = []
    taken: set[int] = set()
    for n in runs:
        for base in free_ports(64):
            ports = set(range(base, base + n))
            if ports & taken or base + n > 65535:
                continue
            socks = []
            try:
                for port in sorted(ports):
                    socks.append(socket.socket())
                    socks[-1].bind(("0.0.0.0", port))
            except OSError:
                continue
            finally:
                for sk in socks:
                    sk.close()
            bases.append(base)
            taken |= ports
            break
        else:
            raise RuntimeError(f"no run of {n} free ports")
    return bases


@pytest.fixture
def slurm(tmp_path):
    """slurmctld and slurmd for this host alone; yields the environment for Slurm commands."""
    if SLURM_MISSING:
        pytest.skip(f"Slurm not installed ({', '.join(SLURM_MISSING)} missing)")
    if os.geteuid() != 0:
        pytest.skip("slurmd needs root")
    d = tmp_path / "slurm"
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True)
    host = socket.gethostname()
    (ctld_port,) = _consecutive_free_ports(2)
    conf = d / "slurm.conf"
    conf.write_text(
        f"""ClusterName=asyncrltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={ctld_port + 1}
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "slurmctld.pid"}
SlurmdPidFile={d / "slurmd.pid"}
SlurmctldLogFile={d / "slurmctld.log"}
SlurmdLogFile={d / "slurmd.log"}
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
    )
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = [
        subprocess.Popen([daemon, "-D", "-f", str(conf)], env=env, stderr=subprocess.DEVNULL)
        for daemon in ("slurmctld", "slurmd")
    ]
    try:
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            ).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        assert state == "idle", (d / "slurmctld.log").read_text()[-2000:]
        yield env
    finally:
        for p in daemons:
            p.terminate()
        for p in daemons:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)


def test_a_real_single_node_slurm_runs_the_script(slurm, small_overrides, tmp_path):
    out = tmp_path / "run"
    overrides = [a for a in small_overrides if not a.startswith("learner.output_dir=")]
    # Every group trains (the small warm start often scores 0 everywhere: all filtered).
    overrides.append("buffer.filter_zero_variance=false")
    control, metrics = _consecutive_free_ports(3, 2)
    env = dict(
        slurm,
        ASYNCRL_CONFIG="tiny-cpu",
        ASYNCRL_PYTHON=sys.executable,
        ASYNCRL_OUTPUT_DIR=str(out),
        ASYNCRL_LEARNER_PROCS="1",
        ASYNCRL_CONTROL_PORT=str(control),
        ASYNCRL_METRICS_PORT=str(metrics),
    )
    log = tmp_path / "job.log"
    done = subprocess.run(
        ["sbatch", "--wait", "--nodes=1", f"--output={log}", str(SCRIPT), *overrides]
        + ["train.steps=3"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = log.read_text() if log.exists() else ""
    assert done.returncode == 0, (done.stderr, text[-4000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_version"] == 3
    assert summary["generators_seen"] == [f"{socket.gethostname()}-0"]
