"""A stand-in for an SGLang server's weight-update side, run as its own process: it joins the
learner's group over gloo the way SGLang's `/init_weights_update_group` does (rank_offset +
tp_rank, group prefixed store) and receives `/update_weights_from_distributed` flattened
buckets the way SGLang's weight updater does (one uint8 broadcast, tensors viewed in order).

`/state` returns what it holds: per tensor name, the XXH3 of its bytes, and the version
label, so a test compares it with what the learner published. When MODEL_PATH holds a
model, `/generate` samples from it with the hf backend (answering in SGLang's shape) and
every received version is loaded into it, so a whole run can use this server as its
SGLang. SGLang itself is exercised by the `sglang`-marked tests on GPU machines.

    python tests/integration/fake_weight_server.py PORT MODEL_PATH
"""

from __future__ import annotations

import json
import math
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import torch
import torch.distributed as dist
import xxhash

from asyncrl.learner.publishers.nccl_channel import join_group

STATE: dict = {"groups": {}, "tensors": {}, "version": None, "updates": 0, "hf": None}


def _receive(req: dict) -> None:
    pg = STATE["groups"][req["group_name"]]
    if req.get("load_format") != "flattened_bucket":
        raise ValueError("only flattened buckets are sent by asyncrl")
    specs = []
    total = 0
    for name, dtype, shape in zip(req["names"], req["dtypes"], req["shapes"]):
        dt = getattr(torch, dtype)
        nbytes = math.prod(shape) * torch.empty(0, dtype=dt).element_size()
        if total % torch.empty(0, dtype=dt).element_size():
            raise ValueError(f"{name}: offset {total} not aligned to {dtype}")
        specs.append((name, dt, shape, total, nbytes))
        total += nbytes
    flat = torch.empty(total, dtype=torch.uint8)
    dist.broadcast(flat, src=0, group=pg)
    received = {}
    for name, dt, shape, start, nbytes in specs:
        t = received[name] = flat[start : start + nbytes].view(dt).reshape(shape)
        STATE["tensors"][name] = xxhash.xxh3_64(
            t.contiguous().view(torch.uint8).numpy()
        ).hexdigest()
    STATE["version"] = req.get("weight_version")
    STATE["updates"] += 1
    hf = STATE["hf"]
    if hf is not None:
        params = dict(hf.model.named_parameters())
        with torch.no_grad():
            for name, t in received.items():
                params[name].copy_(t)


def _generate(req: dict) -> list[dict]:
    import numpy as np

    from asyncrl.protocol.settings import SamplingParams

    sp = req["sampling_params"]
    params = SamplingParams(
        temperature=sp["temperature"],
        top_p=sp.get("top_p", 1.0),
        top_k=max(0, sp.get("top_k", -1)),
        max_new_tokens=sp["max_new_tokens"],
    )
    prompt = np.asarray(req["input_ids"][0], np.int32)
    label = STATE["version"] or "default"
    return [
        {
            "text": "",
            "meta_info": {
                "finish_reason": {"type": s.finish_reason},
                "weight_version": label,
                "output_token_logprobs": [
                    [float(lp), int(tok), None] for lp, tok in zip(s.logprobs, s.tokens)
                ],
            },
        }
        for s in STATE["hf"].generate(prompt, len(req["input_ids"]), params)
    ]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, body: dict, code: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._reply({})
        elif self.path == "/get_model_info":
            self._reply({"model_path": sys.argv[2]})
        elif self.path == "/get_server_info":
            self._reply({"version": "0.5.17", "tp_size": 1, "pp_size": 1})
        elif self.path == "/state":
            self._reply(
                {k: STATE[k] for k in ("tensors", "version", "updates")}
                | {"groups": sorted(STATE["groups"])}
            )
        else:
            self._reply({"detail": "not found"}, 404)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        try:
            if self.path == "/init_weights_update_group":
                STATE["groups"][req["group_name"]] = join_group(
                    req["master_address"],
                    req["master_port"],
                    req["world_size"],
                    req["rank_offset"],  # tp_rank 0
                    req["group_name"],
                    req["backend"],
                    timeout=60,
                )
            elif self.path == "/destroy_weights_update_group":
                dist.destroy_process_group(STATE["groups"].pop(req["group_name"]))
            elif self.path == "/update_weights_from_distributed":
                _receive(req)
            elif self.path == "/generate" and STATE["hf"] is not None:
                self._reply(_generate(req))
                return
            else:
                self._reply({"detail": "not found"}, 404)
                return
        except Exception as exc:  # SGLang answers failures as success=false with a message
            self._reply({"success": False, "message": str(exc)}, 400)
            return
        self._reply({"success": True, "message": "ok"})


if __name__ == "__main__":
    if (Path(sys.argv[2]) / "model.safetensors").exists():
        from asyncrl.generators.backends.hf import HFBackend

        torch.set_num_threads(1)
        STATE["hf"] = HFBackend(sys.argv[2])
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
