"""SGLang backend without SGLang: request building and response parsing against payloads
shaped like SGLang's documented ones, and the backend's calls against a fake server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from asyncrl.generators.backends.sglang import SGLangBackend, SGLangConfig, SGLangError
from asyncrl.generators.backends.sglang_api import (
    build_generate_request,
    build_init_weights_group_request,
    build_update_from_distributed_request,
    parse_generate_response,
)
from asyncrl.generators.weights import WeightsError
from asyncrl.learner.weights import serialize_named_tensors
from asyncrl.protocol.blob import digest_of
from asyncrl.protocol.settings import SamplingParams


def test_generate_request_uses_token_ids_and_logprobs():
    req = build_generate_request(
        np.array([5, 6, 7], np.int32),
        2,
        SamplingParams(temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=16),
    )
    assert req == {
        "input_ids": [[5, 6, 7], [5, 6, 7]],
        "sampling_params": {"temperature": 0.7, "top_p": 1.0, "top_k": -1, "max_new_tokens": 16},
        "return_logprob": True,
        "logprob_start_len": -1,
    }
    greedy = build_generate_request(np.array([1]), 1, SamplingParams(top_k=5), greedy=True)
    assert greedy["sampling_params"]["temperature"] == 0.0
    assert greedy["sampling_params"]["top_k"] == 5


# Shaped like SGLang's /generate output for a batch of two (meta_info fields per io_struct).
FIXTURE = [
    {
        "text": "12",
        "meta_info": {
            "id": "a",
            "finish_reason": {"type": "stop", "matched": 2},
            "prompt_tokens": 3,
            "completion_tokens": 3,
            "weight_version": "7",
            "output_token_logprobs": [[-0.5, 12, "1"], [-0.25, 13, None], [-0.01, 2, None]],
        },
    },
    {
        "text": "999",
        "meta_info": {
            "id": "b",
            "finish_reason": {"type": "length", "length": 2},
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "weight_version": "default",
            "output_token_logprobs": [[-1.5, 9, None], [-2.0, 9, None]],
        },
    },
]


def test_parse_generate_response():
    a, b = parse_generate_response(FIXTURE, fallback_version=4)
    assert a.tokens.tolist() == [12, 13, 2] and a.tokens.dtype == np.int32
    assert np.allclose(a.logprobs, [-0.5, -0.25, -0.01]) and a.logprobs.dtype == np.float32
    assert a.finish_reason == "stop" and a.versions.tolist() == [7, 7, 7]
    # A label that is not a version number falls back to the version the backend loaded.
    assert b.finish_reason == "length" and b.versions.tolist() == [4, 4]


def test_parse_abort_and_single_result():
    (s,) = parse_generate_response(
        {"meta_info": {"finish_reason": {"type": "abort"}, "output_token_logprobs": []}}, 1
    )
    assert s.finish_reason == "abort" and len(s.tokens) == 0


def test_weight_group_and_distributed_requests():
    assert build_init_weights_group_request("10.0.0.1", 29500, 1, 9) == {
        "master_address": "10.0.0.1",
        "master_port": 29500,
        "rank_offset": 1,
        "world_size": 9,
        "group_name": "weight_update_group",
        "backend": "nccl",
    }
    req = build_update_from_distributed_request(["w"], ["bfloat16"], [(4, 2)], 12, bucketed=True)
    assert req["shapes"] == [[4, 2]] and req["weight_version"] == "12"
    assert req["load_format"] == "flattened_bucket" and req["flush_cache"] is True
    with pytest.raises(ValueError):
        build_update_from_distributed_request(["a", "b"], ["f32"], [[1]], 1)


class FakeSGLang(BaseHTTPRequestHandler):
    """Records every call; answers like an SGLang server."""

    calls: list = []
    script: list = []  # token ids to answer the next /generate calls with, one list per call
    model_path = ""
    version = "default"
    server_info: dict = {}

    def log_message(self, *args):
        pass

    def _reply(self, body, code=200):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append((self.path, None))
        if self.path == "/health":
            self._reply({})
        elif self.path == "/get_model_info":
            self._reply({"model_path": self.model_path, "is_generation": True})
        elif self.path == "/get_server_info":
            self._reply(type(self).server_info)
        else:
            self._reply({"error": "no"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.calls.append((self.path, body))
        if self.path == "/generate" and type(self).script:
            ids = type(self).script.pop(0)
            item = {
                "meta_info": {
                    "finish_reason": {"type": "stop"},
                    "weight_version": type(self).version,
                    "output_token_logprobs": [[-0.3, t, None] for t in ids],
                }
            }
            self._reply([item] * len(body["input_ids"]))
        elif self.path == "/generate":
            n = len(body["input_ids"])
            out = []
            for _ in range(n):
                out.append(
                    {
                        "meta_info": {
                            "finish_reason": {"type": "length"},
                            "weight_version": type(self).version,
                            "output_token_logprobs": [[-0.1, 5, None], [-0.2, 6, None]],
                        }
                    }
                )
            self._reply(out)
        elif self.path == "/update_weights_from_disk":
            type(self).version = body["weight_version"]
            self._reply({"success": True, "message": "ok", "num_paused_requests": 0})
        elif self.path in ("/pause_generation", "/continue_generation"):
            self._reply({})
        elif self.path in ("/begin_weight_update", "/end_weight_update"):
            self._reply({"success": True})
        elif self.path == "/update_weights_from_distributed":
            type(self).version = body["weight_version"]
            self._reply({"success": True, "message": "ok"})
        else:
            self._reply({"error": "no"}, 404)


@pytest.fixture
def server(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": 50}))
    FakeSGLang.calls = []
    FakeSGLang.script = []
    FakeSGLang.model_path = str(model)
    FakeSGLang.version = "default"
    FakeSGLang.server_info = {"version": "0.5.17", "tp_size": 1, "pp_size": 1, "dp_size": 1}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeSGLang)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", str(model), tmp_path
    httpd.shutdown()


def test_backend_against_fake_server(server):
    url, model, tmp = server
    cfg = SGLangConfig(url=url, weights_dir=str(tmp / "w"), startup_timeout=10)
    backend = SGLangBackend(model, cfg)
    assert backend.vocab_size == 50 and backend.version == -1
    samples = backend.generate(np.array([1, 2], np.int32), 3, SamplingParams(max_new_tokens=2))
    assert len(samples) == 3 and samples[0].tokens.tolist() == [5, 6]
    # Before any update the server's label is "default": tokens carry our version (-1).
    assert samples[0].versions.tolist() == [-1, -1]
    # Two groups (3 of prompt [1, 2], 2 of prompt [7]) in one request of 5 prompts, split back
    # in order.
    groups = backend.generate_groups(
        [np.array([1, 2], np.int32), np.array([7], np.int32)], [3, 2], SamplingParams()
    )
    assert [len(g) for g in groups] == [3, 2]
    path, body = FakeSGLang.calls[-1]
    assert path == "/generate" and body["input_ids"] == [[1, 2]] * 3 + [[7]] * 2

    blob = serialize_named_tensors({"w": torch.ones(3)})
    backend.load_weights(blob, digest_of(blob), 4)
    paths = [p for p, _ in FakeSGLang.calls]
    i = paths.index("/update_weights_from_disk")
    # Pause, update, continue, in that order (the RL guide's flow).
    assert paths[i - 1 : i + 2] == [
        "/pause_generation",
        "/update_weights_from_disk",
        "/continue_generation",
    ]
    update = FakeSGLang.calls[i][1]
    assert update["weight_version"] == "4" and update["model_path"].endswith("/v4")
    written = tmp / "w" / "v4"
    assert (written / "config.json").exists()
    assert (written / "model.safetensors").read_bytes() == bytes(blob)
    assert backend.version == 4
    assert backend.generate(np.array([1]), 1, SamplingParams())[0].versions.tolist() == [4, 4]
    # The next version replaces this one on disk: the server keeps weights in memory.
    blob = serialize_named_tensors({"w": torch.zeros(3)})
    backend.load_weights(blob, digest_of(blob), 5)
    assert sorted(p.name for p in (tmp / "w").iterdir()) == ["v5"]


def test_bad_digest_never_reaches_the_server(server):
    url, model, tmp = server
    backend = SGLangBackend(model, SGLangConfig(url=url, weights_dir=str(tmp / "w")))
    blob = serialize_named_tensors({"w": torch.ones(3)})
    with pytest.raises(WeightsError):
        backend.load_weights(blob, "0" * 64, 1)
    assert "/update_weights_from_disk" not in [p for p, _ in FakeSGLang.calls]


def test_wrong_model_is_refused(server):
    url, _, tmp = server
    other = tmp / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"vocab_size": 3}))
    with pytest.raises(SGLangError, match="serves"):
        SGLangBackend(str(other), SGLangConfig(url=url))


def test_parse_weight_version_spans():
    # Recent SGLang: an update landed after 2 of 3 tokens (weight_versions.py spans).
    meta = {
        "finish_reason": {"type": "stop", "matched": 2},
        "weight_version": "8",
        "weight_versions": [
            {"version": "7", "start": 0, "end": 2},
            {"version": "8", "start": 2, "end": 3},
        ],
        "output_token_logprobs": [[-0.5, 12, None], [-0.25, 13, None], [-0.01, 2, None]],
    }
    (s,) = parse_generate_response({"meta_info": meta}, 1)
    assert s.versions.tolist() == [7, 7, 8] and s.versions.dtype == np.int32
    # No label at all: the backend's version.
    meta = {"finish_reason": {"type": "length"}, "output_token_logprobs": [[-1.0, 3, None]]}
    assert parse_generate_response({"meta_info": meta}, 5)[0].versions.tolist() == [5]


def test_server_already_on_our_weights_is_accepted(server):
    # After /update_weights_from_disk the server reports the update's path as model_path.
    url, model, tmp = server
    FakeSGLang.model_path = str(tmp / "w" / "v3")
    backend = SGLangBackend(model, SGLangConfig(url=url, weights_dir=str(tmp / "w")))
    assert backend.version == -1


def _nccl_backend(server, **info):
    url, model, tmp = server
    FakeSGLang.server_info = {"version": "0.5.17", "tp_size": 1, "pp_size": 1, "dp_size": 1}
    FakeSGLang.server_info.update(info)
    return SGLangBackend(model, SGLangConfig(url=url, weights_dir=str(tmp / "w")))


def test_nccl_world_size_and_refusals(server):
    # The learner is rank 0; every tensor-parallel x pipeline rank of the server joins.
    assert _nccl_backend(server, tp_size=2, pp_size=2).nccl_world_size() == 5
    with pytest.raises(SGLangError, match="needs SGLang >= 0.5.6"):
        _nccl_backend(server, version="0.5.5").nccl_world_size()
    # Data-parallel replicas would each join with the same ranks: refused, not mis-joined.
    with pytest.raises(SGLangError, match="dp-size"):
        _nccl_backend(server, dp_size=2).nccl_world_size()


@pytest.mark.parametrize("version,session", [("0.5.17", False), ("0.5.21", True)])
def test_update_from_buckets_posts_one_update_per_bucket(server, version, session):
    from asyncrl.protocol.messages import NcclPlan

    backend = _nccl_backend(server, version=version)
    plan = NcclPlan(
        4, "", names=["a", "b", "c"], dtypes=["bfloat16"] * 3,
        ranks=[1, 2, 1], dims=[8, 2, 3, 5], counts=[2, 1],
    )  # fmt: skip
    backend.update_from_buckets(plan, 4, "grp")
    posts = [(p, b) for p, b in FakeSGLang.calls if b is not None]
    updates = [b for p, b in posts if p == "/update_weights_from_distributed"]
    assert [u["names"] for u in updates] == [["a", "b"], ["c"]]
    assert updates[0]["shapes"] == [[8], [2, 3]] and updates[1]["shapes"] == [[5]]
    assert all(u["load_format"] == "flattened_bucket" and u["group_name"] == "grp" for u in updates)
    # The cache is flushed once, after the last bucket; every bucket carries the version.
    assert [u["flush_cache"] for u in updates] == [False, True]
    assert {u["weight_version"] for u in updates} == {"4"} and backend.version == 4
    paths = [p for p, _ in posts]
    if session:  # from 0.5.21 the buckets sit inside one weight-update session
        assert paths[0] == "/begin_weight_update" and paths[-1] == "/end_weight_update"
    else:
        assert "/begin_weight_update" not in paths


def test_health_follows_the_server(server):
    url, model, tmp = server
    backend = SGLangBackend(model, SGLangConfig(url=url, weights_dir=str(tmp / "w")))
    assert backend.health() == (True, url)
    backend.url = "http://127.0.0.1:1"  # nothing listens there: the engine is gone
    ok, why = backend.health()
    assert not ok and why.startswith("/health:")


def test_multi_turn_episode_sends_token_ids_per_turn(server):
    """Token-in/token-out with SGLang: every turn of an episode is one /generate whose
    `input_ids` are the prompt, the sampled ids and the rendered tool result, exactly."""
    from asyncrl.generators.envs.episode import EpisodeLimits, EpisodeRunner
    from asyncrl.generators.envs.render import ChatRenderer
    from asyncrl.generators.envs.tool_env import ToolEnvironment
    from asyncrl.generators.envs.tools import calculator
    from asyncrl.launch.tiny_agent import build_agent_tokenizer, tool_call_text

    url, model, tmp = server
    tok = build_agent_tokenizer()

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    call = ids(tool_call_text("1+2")) + [tok.eos_token_id]
    answer = ids("3") + [tok.eos_token_id]
    FakeSGLang.script = [call, answer]
    backend = SGLangBackend(model, SGLangConfig(url=url, weights_dir=str(tmp / "w")))
    assert backend.capabilities.token_continuation
    runner = EpisodeRunner(
        backend.continue_batch,
        lambda: ToolEnvironment([calculator]),
        ChatRenderer(tok),
        EpisodeLimits(max_turns=3),
        lambda: backend.version,
    )
    prompt = ids("1+2=")
    (s,) = runner.run(np.array(prompt, np.int32), 1, SamplingParams(max_new_tokens=64))
    turns = [body for path, body in FakeSGLang.calls if path == "/generate"]
    obs = ids("<tool_response>3</tool_response>")
    assert [t["input_ids"] for t in turns] == [[prompt], [prompt + call + obs]]
    # The second turn may use what is left of the episode's budget of 64 tokens.
    assert turns[1]["sampling_params"]["max_new_tokens"] == 64 - len(call) - len(obs)
    assert all(t["return_logprob"] for t in turns)
    assert s.tokens.tolist() == call + obs + answer
    assert s.mask.tolist() == [1] * len(call) + [0] * len(obs) + [1] * len(answer)
    assert s.logprobs.tolist() == pytest.approx(
        [-0.3] * len(call) + [0.0] * len(obs) + [-0.3] * len(answer)
    )
    assert s.finish_reason == "stop"
