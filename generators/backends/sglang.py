"""The SGLang backend: drive an SGLang HTTP server (launched here or attached to by URL).

Only the standard library talks to the server, so this module imports without SGLang; the
`sglang` package is needed only to launch a server (`pip install asyncrl[sglang]`). The
payloads are `sglang_api.py`. Weight updates follow SGLang's RL guide
(`docs/advanced_features/sglang_for_rl.md`): `/pause_generation` (mode
abort|retract|in_place) -> `/update_weights_from_disk` -> `/continue_generation`.

The nccl transport: `/init_weights_update_group` blocks until every rank joined. Facts the
publisher relies on (read from the released wheels 0.4.10-0.5.23): the server joins with
`rank_offset + tp_rank` through a copy of torch's init_process_group (rendezvous on
tcp://master, PrefixStore(group_name)), so the learner must be rank 0 of an identical group,
started concurrently with the HTTP call; dtypes travel as `"bfloat16"` (getattr(torch, ...));
`weight_version` needs >= 0.5.2 and `load_format` >= 0.5.6, and a flattened bucket must keep
each tensor's byte offset a multiple of its itemsize; from 0.5.21 the update must be wrapped in
`/begin_weight_update` and `/end_weight_update`, or the server never joins the broadcast and
the learner hangs. The publisher is `learner/nccl.py`; this backend's side is
`nccl_world_size`, `join_update_group` and `update_from_buckets` (flattened buckets only, so
>= 0.5.6).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from asyncrl.generators.backends.base import Capabilities, Sample, split_groups
from asyncrl.generators.backends.sglang_api import (
    build_continue_request,
    build_generate_request,
    build_init_weights_group_request,
    build_update_from_disk_request,
    build_update_from_distributed_request,
    parse_generate_response,
    parse_version,
)
from asyncrl.protocol.blob import write_version_dir
from asyncrl.protocol.settings import SamplingParams, StrictModel

logger = logging.getLogger(__name__)

NCCL_MIN_VERSION = (0, 5, 6)  # load_format "flattened_bucket" on the distributed update
SESSION_VERSION = (0, 5, 21)  # updates must sit between /begin_ and /end_weight_update


class SGLangConfig(StrictModel):
    """The `generator.sglang` section: how to reach (or start) the SGLang server."""

    url: str | None = Field(
        None,
        description="Attach to a running server (http://HOST:PORT). Empty: launch "
        "`python -m sglang.launch_server` for model.path on `port`.",
    )
    port: int = Field(30000, ge=1, le=65535, description="Port of a server launched here.")
    extra_args: list[str] = Field(
        default_factory=list,
        description="More launch_server arguments, e.g. ['--tp', '2', '--mem-fraction-static', "
        "'0.8'].",
    )
    startup_timeout: float = Field(900.0, gt=0, description="Seconds to wait for /health.")
    request_timeout: float = Field(1800.0, gt=0, description="Seconds one /generate may take.")
    pause_mode: Literal["abort", "retract", "in_place"] = Field(
        "retract",
        description="How /pause_generation treats running requests during a weight update.",
    )
    weights_dir: str = Field(
        "/tmp/asyncrl-sglang-weights",
        description="Where weights received over ZeroMQ are written for "
        "/update_weights_from_disk (must be readable by the server).",
    )
    check_model_path: bool = Field(
        True, description="Refuse a server whose /get_model_info model_path differs."
    )


class SGLangError(RuntimeError):
    """The server answered with an error or not at all."""


class SGLangBackend:
    """The `Backend` interface over an SGLang server: the server reads weight directories
    and joins nccl weight-update groups."""

    name = "sglang"
    capabilities = Capabilities(
        weight_directories=True,
        distributed_groups=True,
        token_continuation=True,
        batched_groups=True,
    )

    def __init__(self, model_path: str, cfg: SGLangConfig):
        self.model_path = model_path
        self.cfg = cfg
        self.version = -1  # until the learner's weights are loaded, as in the hf backend
        self.process: subprocess.Popen | None = None
        self._warned_truncation = False
        self._server_info: dict | None = None
        self._group: str | None = None  # the weight-update group the server joined
        self.url = cfg.url.rstrip("/") if cfg.url else self._launch()
        self._wait_healthy()
        config = json.loads((Path(model_path) / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])

    # -------------------------------------------------------------- server
    def _launch(self) -> str:
        try:
            import sglang  # noqa: F401
        except ImportError as exc:
            raise SGLangError(
                "generator.backend is 'sglang' with no generator.sglang.url, but SGLang is not "
                "installed: pip install 'asyncrl[sglang]' or attach to a server by URL"
            ) from exc
        cmd = [
            sys.executable,
            "-m",
            "sglang.launch_server",
            "--model-path",
            self.model_path,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.cfg.port),
            *self.cfg.extra_args,
        ]
        logger.info("launching SGLang: %s", " ".join(cmd))
        self.process = subprocess.Popen(cmd)
        return f"http://127.0.0.1:{self.cfg.port}"

    def _wait_healthy(self) -> None:
        deadline = time.time() + self.cfg.startup_timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise SGLangError(f"SGLang server exited with code {self.process.returncode}")
            try:
                self._get("/health", timeout=5)
                break
            except SGLangError:
                if time.time() > deadline:
                    raise SGLangError(f"no healthy SGLang server at {self.url}") from None
                time.sleep(2)
        info = self._get("/get_model_info", timeout=30)
        served = str(info.get("model_path", ""))
        if self.cfg.check_model_path and served and not self._is_ours(served):
            raise SGLangError(
                f"the server at {self.url} serves {served!r}, not {self.model_path!r}; "
                "point generator.sglang.url at the right server or set "
                "generator.sglang.check_model_path=false"
            )

    def _is_ours(self, served: str) -> bool:
        """The configured model, or weights we wrote: after a successful
        /update_weights_from_disk the server reports the update's path as its model_path
        (tokenizer_manager._wait_for_model_update_from_disk), so a generator restarted against
        a server that already took updates must accept `weights_dir/v<N>`."""
        if served == self.model_path:
            return True
        try:
            served_p = Path(served).resolve()
        except OSError:
            return False
        return (
            served_p == Path(self.model_path).resolve()
            or served_p.parent == Path(self.cfg.weights_dir).resolve()
        )

    def _request(self, method: str, path: str, payload: dict | None, timeout: float):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise SGLangError(f"{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SGLangError(f"{path}: {exc}") from None
        return json.loads(body) if body.strip() else {}

    def _get(self, path: str, timeout: float):
        return self._request("GET", path, None, timeout)

    def _post(self, path: str, payload: dict, timeout: float | None = None):
        return self._request("POST", path, payload, timeout or self.cfg.request_timeout)

    # -------------------------------------------------------------- Backend
    def generate(self, prompt_ids: np.ndarray, n: int, params: SamplingParams) -> list[Sample]:
        if (params.top_p < 1.0 or params.top_k > 0) and not self._warned_truncation:
            # SGLang's logprobs are of softmax(logits / T) before top-k/top-p, not of the
            # truncated distribution the token was drawn from (the hf backend renormalises):
            # importance weights computed from them are biased.
            logger.warning(
                "top_p=%s top_k=%s: SGLang logprobs are not renormalised after truncation",
                params.top_p,
                params.top_k,
            )
            self._warned_truncation = True
        payload = self._post("/generate", build_generate_request(prompt_ids, n, params))
        samples = parse_generate_response(payload, self.version)
        if len(samples) != n:
            raise SGLangError(f"/generate returned {len(samples)} results for {n} prompts")
        return samples

    def generate_groups(
        self, prompts: list[np.ndarray], ns: list[int], params: SamplingParams
    ) -> list[list[Sample]]:
        """Every group's copies in one request: the server batches them (and shares each
        prompt's prefix in its radix cache)."""
        samples = self.continue_batch([p for p, n in zip(prompts, ns) for _ in range(n)], params)
        return split_groups(samples, ns)

    def continue_batch(
        self, contexts: list[np.ndarray], params: SamplingParams, greedy: bool = False
    ) -> list[Sample]:
        payload = self._post("/generate", build_continue_request(contexts, params, greedy))
        samples = parse_generate_response(payload, self.version)
        if len(samples) != len(contexts):
            raise SGLangError(f"/generate returned {len(samples)} results for {len(contexts)}")
        return samples

    def generate_greedy(self, prompt_ids: np.ndarray, max_new_tokens: int) -> np.ndarray:
        params = SamplingParams(max_new_tokens=max_new_tokens)
        payload = self._post("/generate", build_generate_request(prompt_ids, 1, params, True))
        return parse_generate_response(payload, self.version)[0].tokens

    def load_weights(self, blob, digest: str, version: int) -> None:
        """Verify, write atomically as a model directory, and have the server load it."""
        # Here, not at the top: the config schema imports this module, and must not pull in
        # torch (the command line answers --help and config errors before torch loads).
        from asyncrl.generators.weights import WeightsError, verify_and_decode

        verify_and_decode(blob, digest)  # raises on a bad digest before the server is touched
        path = self.write_weights(blob, version)
        self.update_from_disk(str(path), version)
        if self.version != version:
            raise WeightsError(f"server did not report version {version}")

    def write_weights(self, blob, version: int) -> Path:
        """`weights_dir/v<version>/` with the base model's config and the new safetensors,
        written atomically (the same layout as the learner's disk transport). Only this
        version is kept: the server holds the previous one in memory, not on disk."""
        path = write_version_dir(self.cfg.weights_dir, version, blob, self.model_path, keep=1)
        return Path(path)

    def update_from_disk(self, path: str, version: int) -> None:
        """The disk publisher's path: pause, load `path` labelled `version`, continue."""
        self._post("/pause_generation", {"mode": self.cfg.pause_mode}, timeout=600)
        try:
            result = self._post(
                "/update_weights_from_disk", build_update_from_disk_request(path, version)
            )
        finally:
            self._post("/continue_generation", {}, timeout=600)
        if not result.get("success", False):
            raise SGLangError(f"update_weights_from_disk failed: {result.get('message')}")
        self.version = version

    # -------------------------------------------------------------- nccl transport
    def server_info(self) -> dict:
        if self._server_info is None:
            self._server_info = self._get("/get_server_info", timeout=30)
        return self._server_info

    def server_version(self) -> tuple[int, ...]:
        return parse_version(str(self.server_info().get("version", "0")))

    def nccl_world_size(self) -> int:
        """The learner plus every rank of the server that loads weights."""
        if self.server_version() < NCCL_MIN_VERSION:
            raise SGLangError(
                f"the nccl transport needs SGLang >= {'.'.join(map(str, NCCL_MIN_VERSION))} "
                f"(flattened buckets); this server is {self.server_info().get('version')}: "
                "use learner.weights.type=zmq or disk"
            )
        info = self.server_info()
        if int(info.get("dp_size", 1)) > 1:
            # Each data-parallel replica would join with the same ranks (rank_offset +
            # tp_rank) and the group would never form.
            raise SGLangError(
                "the nccl transport needs one SGLang server per generator without --dp-size; "
                "run one generator per replica"
            )
        return 1 + int(info.get("tp_size", 1)) * int(info.get("pp_size", 1))

    def join_update_group(
        self, address: str, port: int, group_name: str, backend: str, world_size: int
    ) -> None:
        """Have the server join the learner's group as ranks 1..world_size-1 (blocks until
        the learner joined too); a group joined before is destroyed first."""
        if self._group is not None:
            try:
                self._post("/destroy_weights_update_group", {"group_name": self._group}, 60)
            except SGLangError as exc:  # the old group may be half gone; a new one is what counts
                logger.info("destroying group %s: %s", self._group, exc)
            self._group = None
        req = build_init_weights_group_request(address, port, 1, world_size, group_name, backend)
        result = self._post("/init_weights_update_group", req)
        if not result.get("success", False):
            raise SGLangError(f"init_weights_update_group failed: {result.get('message')}")
        self._group = group_name

    def update_from_buckets(self, plan, version: int, group_name: str) -> None:
        """Receive one version as the learner broadcasts `plan`'s buckets, in order; the
        cache is flushed after the last. From 0.5.21 SGLang wants the update wrapped in a
        weight-update session."""
        session = self.server_version() >= SESSION_VERSION
        if session:
            self._post("/begin_weight_update", {})
        try:
            buckets = plan.buckets()
            n = len(buckets)
            for i, (names, dtypes, shapes) in enumerate(buckets):
                req = build_update_from_distributed_request(
                    names, dtypes, shapes, version, group_name, bucketed=True
                )
                req["flush_cache"] = i == n - 1
                result = self._post("/update_weights_from_distributed", req)
                if not result.get("success", False):
                    raise SGLangError(
                        f"update_weights_from_distributed failed: {result.get('message')}"
                    )
        finally:
            if session:
                self._post("/end_weight_update", {})
        self.version = version

    def health(self) -> tuple[bool, str]:
        if self.process is not None and self.process.poll() is not None:
            return False, f"the SGLang server exited with code {self.process.returncode}"
        try:
            self._get("/health", timeout=2)
        except SGLangError as exc:
            return False, str(exc)
        return True, self.url

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
