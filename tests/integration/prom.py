"""A real Prometheus server for integration tests: generated config, loopback only.

`Prometheus(workdir, {"job": ["host:port", ...]}, rule_files=[...])` writes a config that
scrapes every target each second (and evaluates the given rule files each second), starts
`prometheus` on a free loopback port with its TSDB under `workdir`, and waits for `/-/ready`.
`query`, `wait_for`, `targets` and `rules` read its HTTP API; `stop` ends the server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from asyncrl.protocol.sockets import free_port

PROMETHEUS = shutil.which("prometheus")


class PromQLError(AssertionError):
    """Prometheus refused a query (bad syntax, unknown function, evaluation error)."""


class Prometheus:
    """Scrapes `targets` ({job: [host:port, ...]}) every second until stopped."""

    def __init__(
        self,
        workdir: Path,
        targets: dict[str, list[str]],
        rule_files: list[Path] = (),
        ready_timeout: float = 60.0,
    ):
        if PROMETHEUS is None:
            raise RuntimeError("prometheus is not on PATH")
        workdir.mkdir(parents=True, exist_ok=True)
        rules = []
        for i, src in enumerate(rule_files):
            dst = workdir / f"rules-{i}-{Path(src).name}"
            shutil.copyfile(src, dst)
            rules.append(str(dst))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rules,
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]}
                for job, hosts in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus did not become ready:\n{self.log_tail()}")

    def _get(self, path: str, **params) -> dict:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422: the body says why
            body = json.loads(e.read() or b"{}")
            raise PromQLError(f"{path} {params}: {body.get('error', e)}") from None
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query; returns the result vector (or [] for an empty one)."""
        data = self._get("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for(self, expr: str, timeout: float = 90.0) -> list[dict]:
        """Poll until the query returns a non-empty vector; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"no result for {expr!r} within {timeout}s")
            time.sleep(1.0)

    def targets(self) -> list[dict]:
        """Active scrape targets (labels, health, lastError)."""
        return self._get("/api/v1/targets")["activeTargets"]

    def rules(self) -> list[dict]:
        """Every loaded rule with its health and last error."""
        return [r for g in self._get("/api/v1/rules")["groups"] for r in g["rules"]]

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
