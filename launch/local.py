"""`asyncrl local`: one learner and N generator processes on this machine, over loopback.

The processes are the same commands an operator would start on separate hosts; this module
only picks free ports, starts them, relays their progress, and prints two machine-readable JSON
lines on stdout: `started` once every process is up and `summary` at the end.

Metrics ports set in the config (file or override) are honoured, so a Prometheus scrape config
can name them: the learner's as given, generator k's `generator.metrics_port + k`. Unset (or
0), each process gets a free port, and then nothing can be scraping it, so the processes do not
linger after the finish (`metrics_linger_seconds`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from asyncrl.launch.config import AsyncRLConfig, dump_config
from asyncrl.protocol.sockets import free_ports

logger = logging.getLogger(__name__)


def _cmd(role: str, config_path: Path, log_level: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "asyncrl.launch.cli",
        role,
        "--config",
        str(config_path),
        "--log-level",
        log_level,
        *extra,
    ]


def _healthy(url: str, auth_file: str = "") -> bool:
    request = urllib.request.Request(url.replace("/metrics", "/healthz"))
    if auth_file:
        token = base64.b64encode(Path(auth_file).read_text().strip().encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    # Our own child on this machine: its certificate may name another host.
    ctx = None
    if url.startswith("https"):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=1, context=ctx) as r:
            return r.status == 200
    except OSError:
        return False


def _metrics_url(host: str, port: int, tls: bool) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"{'https' if tls else 'http'}://{shown}:{port}/metrics"


def _configured_port(section, field: str = "metrics_port") -> int:
    """The port set in the config (file or override), or 0 when left to its default."""
    return getattr(section, field) if field in section.model_fields_set else 0


def plan_metrics(
    cfg: AsyncRLConfig, n: int, free: list[int] | None = None
) -> tuple[int, list[int], float, float]:
    """(learner port, generator ports, learner linger, generator linger) for a local run:
    configured ports kept (generator k: the configured port + k), the others taken from
    `free` (distinct free ports); a process on a port picked here cannot be scraped by anyone,
    so it does not linger."""
    free = list(free) if free is not None else free_ports(n + 1)
    learner = _configured_port(cfg.learner)
    gen = _configured_port(cfg.generator)
    gen_ports = [gen + k for k in range(n)] if gen else [free.pop() for _ in range(n)]
    return (
        learner or free.pop(),
        gen_ports,
        cfg.learner.metrics_linger_seconds if learner else 0.0,
        cfg.generator.metrics_linger_seconds if gen else 0.0,
    )


def run_local(cfg: AsyncRLConfig, log_level: str = "INFO") -> int:
    """Run the whole loop; returns the process exit code."""
    out_dir = Path(cfg.learner.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.path is None:
        from asyncrl.launch.tiny import setup_tiny_assets

        t = time.time()
        setup_tiny_assets(cfg.tiny)  # built once here so the children only hit the cache
        logger.info("embedded tiny model ready in %.1fs", time.time() - t)
    n = cfg.local.generators
    cores = os.cpu_count() or 1
    threads = max(1, cores // (n + 1))
    learner_cpus, generator_cpus = _core_split() if cfg.local.pin_cores else (None, None)
    if learner_cpus:
        # Pinned: the learner's threads fill its cores; generators share the rest.
        threads = max(1, len(generator_cpus) // n)
        learner_threads = len(learner_cpus)
    else:
        learner_threads = threads
    # The ZeroMQ ports are for fleets; on one machine any free loopback port will do and two
    # local runs never clash. Metrics ports are what a scrape config names: kept when set.
    ports = free_ports(n + 4)  # distinct: three ZeroMQ sockets, then the metrics ports
    learner_port, gen_ports, learner_linger, gen_linger = plan_metrics(cfg, n, ports[3:])
    lc = cfg.learner.model_copy(
        update={
            "bind_host": "127.0.0.1",
            "control_port": ports[0],
            "rollouts_port": ports[1],
            "weights_port": ports[2],
            "metrics_port": learner_port,
            "metrics_linger_seconds": learner_linger,
        }
    )
    gc = cfg.generator.model_copy(update={"metrics_linger_seconds": gen_linger})
    run_cfg = cfg.model_copy(update={"learner": lc, "generator": gc})
    if not run_cfg.train.threads:
        run_cfg = run_cfg.model_copy(
            update={"train": run_cfg.train.model_copy(update={"threads": learner_threads})}
        )
    config_path = out_dir / "config.yaml"
    config_path.write_text(dump_config(run_cfg))
    summary_path = out_dir / "summary.json"
    summary_path.unlink(missing_ok=True)

    learner_url = _metrics_url(lc.metrics_host, lc.metrics_port, bool(lc.metrics_tls_certfile))
    # The children are a fresh single-rank world: rendezvous variables inherited from a
    # caller that initialised torch.distributed itself (e.g. `asyncrl bench`) would make the
    # learner bind a port its parent holds.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    env["PYTHONUNBUFFERED"] = "1"
    procs: list[subprocess.Popen] = []
    learner = subprocess.Popen(
        _cmd("learner", config_path, log_level, []),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_child_setup(learner_cpus),
    )
    procs.append(learner)
    gen_urls = {}
    for k in range(n):
        port = gen_ports[k]
        gen_urls[f"generator-{k}"] = _metrics_url(
            gc.metrics_host, port, bool(gc.metrics_tls_certfile)
        )
        extra = [
            f"generator.generator_id=generator-{k}",
            f"generator.metrics_port={port}",
            f"generator.learner=tcp://127.0.0.1:{lc.control_port}",
            f"generator.threads={run_cfg.generator.threads or threads}",
            f"generator.seed={run_cfg.generator.seed + k}",
            f"generator.phases_path={out_dir / f'generator-{k}-phases.json'}",
        ]
        procs.append(
            subprocess.Popen(
                _cmd("generator", config_path, log_level, extra),
                env=env,
                stdout=subprocess.DEVNULL,
                preexec_fn=_child_setup(generator_cpus),
            )
        )

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    events: dict[str, dict] = {}
    ready = threading.Event()

    def read_learner() -> None:
        for line in learner.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            events[ev.get("event", "")] = ev
            if ev.get("event") == "learner_ready":
                ready.set()

    reader = threading.Thread(target=read_learner, daemon=True)
    reader.start()
    code = 0
    try:
        while not ready.wait(0.5):
            if learner.poll() is not None:
                logger.error("learner exited with %s before it was ready", learner.returncode)
                return 1
        deadline = time.time() + 300
        # Up: answering its health check, or already exited 0 (it finished with the run; a
        # short run can end before the first health check).
        while not all(
            _healthy(u, gc.metrics_auth_file) or p.poll() == 0
            for u, p in zip(gen_urls.values(), procs[1:])
        ):
            dead = [p for p in procs[1:] if p.poll() not in (None, 0)]
            if dead or time.time() > deadline:
                logger.error("a generator did not come up")
                return 1
            time.sleep(0.5)
        _print(
            {
                "event": "started",
                "endpoints": events["learner_ready"]["endpoints"],
                "metrics": {"learner": learner_url, **gen_urls},
            }
        )
        code = learner.wait()
        reader.join(timeout=5)
    finally:
        forward(signal.SIGTERM, None)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    if code != 0 or not summary_path.exists():
        logger.error("learner failed (exit code %s)", code)
        return code or 1
    summary = json.loads(summary_path.read_text())
    _print(summary)
    return 0


def _core_split() -> tuple[set[int] | None, set[int] | None]:
    """Learner on the first half of the cores, generators on the rest (at least one each);
    None when there are not two cores to split."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(available) < 2:
        logger.warning("local.pin_cores needs at least 2 cores; running unpinned")
        return None, None
    half = max(1, len(available) // 2)
    return set(available[:half]), set(available[half:])


def _child_setup(cpus: set[int] | None):
    """Runs in each child before exec: optional core pinning, and on Linux a SIGTERM when
    this launcher dies, so a killed `asyncrl local` never leaves orphans behind."""

    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if sys.platform.startswith("linux"):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)

    return setup


# Where `_print` writes the JSON events: the CLI hands a private copy of stdout here before
# anything heavy is imported, so what libraries print (DeepSpeed's accelerator warning while
# the tiny model is built) goes to stderr instead of between the events.
EVENTS = sys.stdout


def _print(event: dict) -> None:
    EVENTS.write(json.dumps(event) + "\n")
    EVENTS.flush()
