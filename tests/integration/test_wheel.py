"""A wheel built from the checkout installs next to the index's unrelated `buffer` and
`protocol` distributions: the only top-level name asyncrl adds is `asyncrl`.

The fresh venv gets the index's `buffer` and `protocol`, then the wheel with `--no-deps`. The
project's own dependencies (torch and the rest) are made visible without reinstalling them: a
`.pth` file appends the directories of this interpreter's packages after the venv's own. Those
directories are added as plain paths, so the `.pth` files in them (the editable install's
finder among them) are not run: what `asyncrl` resolves to there is the wheel, nothing else.
Needs the package index; skipped when it is unreachable.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

LAYERS = ("protocol", "buffer", "generators", "learner", "launch")
# pip's own words for a network failure (as opposed to a package that does not exist).
OFFLINE = re.compile(
    r"NewConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|Network is unreachable"
    r"|Temporary failure in name resolution|Name or service not known|Connection refused"
    r"|ProxyError|SSLError"
)
RUN = dict(capture_output=True, text=True, timeout=120)


def pip(python: Path | str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(python), "-m", "pip", "--timeout", "30", "--retries", "2", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def checked(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def dependency_dirs(fresh_python: Path) -> list[str]:
    """This interpreter's package directories, as it sees them without the test runner's
    additions (-I: no cwd, no PYTHONPATH), minus what the fresh venv has itself (the stdlib)."""
    code = "import json, sys; print(json.dumps(sys.path))"
    mine = json.loads(checked(subprocess.run([sys.executable, "-I", "-c", code], **RUN)).stdout)
    own = json.loads(checked(subprocess.run([str(fresh_python), "-I", "-c", code], **RUN)).stdout)
    return [p for p in mine if p not in own and Path(p).is_dir()]


def test_wheel_installs_beside_the_index_buffer_and_protocol(tmp_path):
    # The index's distributions exist (and the index answers at all).
    probe = pip(
        sys.executable, "download", "--no-deps", "-d", "dl", "buffer", "protocol", cwd=tmp_path
    )
    if probe.returncode != 0 and OFFLINE.search(probe.stdout + probe.stderr):
        pytest.skip(f"package index unreachable: {OFFLINE.search(probe.stdout + probe.stderr)[0]}")
    checked(probe)

    # Build from a copy, so the checkout gets no build/ or egg-info of this run.
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "runs", ".*_cache"
        ),
    )
    checked(pip(sys.executable, "wheel", "--no-deps", "-w", "dist", str(src), cwd=tmp_path))
    (wheel,) = (tmp_path / "dist").glob("asyncrl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"asyncrl"}, f"top-level names besides asyncrl: {sorted(tops)}"
    # Every package of the checkout, subpackages too (pyproject lists them one by one).
    for layer in LAYERS:
        for init in (REPO / layer).rglob("__init__.py"):
            packaged = f"asyncrl/{layer}/{init.relative_to(REPO / layer).as_posix()}"
            assert packaged in names, f"{packaged} missing: add its package to pyproject.toml"
    for shipped in (
        "asyncrl/launch/presets/tiny-cpu.yaml",
        "asyncrl/launch/ops/alerts.yml",
        "asyncrl/launch/ops/grafana-dashboard.json",
        "asyncrl/launch/ops/prometheus.example.yml",
        "asyncrl/launch/recipes/slurm/asyncrl.sbatch",
        "asyncrl/launch/recipes/kubernetes/generators.yaml",
    ):
        assert shipped in names, f"{shipped} missing from the wheel"

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        checked(
            subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                **RUN,
            )
        ).stdout.strip()
    )
    # Written before anything is installed, so pip sees numpy & co. as present and does not
    # fetch them again.
    (site / "zz_asyncrl_deps.pth").write_text("\n".join(dependency_dirs(python)) + "\n")
    checked(pip(python, "install", "protocol", "wrapt>=1.14,<2", cwd=tmp_path))
    # buffer 0.2.1 pins wrapt 1.11.2, which imports inspect.formatargspec (gone since Python
    # 3.11); it only uses wrapt.decorators.synchronized, which wrapt 1.14 (the first for 3.11)
    # to 1.17 keep and 2.0 moved.
    checked(pip(python, "install", "--no-deps", "buffer", cwd=tmp_path))
    checked(pip(python, "install", "--no-deps", str(wheel), cwd=tmp_path))

    # From a directory holding nothing importable: the checkout's folders must not be found.
    asyncrl = str(env_dir / "bin" / "asyncrl")
    cli = checked(subprocess.run([asyncrl, "local", "--help"], cwd=tmp_path, **RUN))
    assert "usage: asyncrl local" in cli.stdout
    code = (
        "import json, sys\n"
        "import asyncrl.learner, buffer, protocol, asyncrl.buffer, asyncrl.protocol\n"
        "print(json.dumps({m: sys.modules[m].__file__ for m in "
        "['buffer', 'protocol', 'asyncrl.buffer', 'asyncrl.protocol', 'asyncrl.learner']}))\n"
    )
    where = json.loads(
        checked(subprocess.run([str(python), "-c", code], cwd=tmp_path, **RUN)).stdout
    )
    assert where["buffer"] == str(site / "buffer" / "__init__.py")
    assert where["protocol"] == str(site / "protocol" / "__init__.py")
    for layer in ("buffer", "protocol", "learner"):
        assert where[f"asyncrl.{layer}"] == str(site / "asyncrl" / layer / "__init__.py")
