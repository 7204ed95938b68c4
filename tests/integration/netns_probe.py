"""An unauthorised peer on another host: `python -m tests.integration.netns_probe KEY_DIR
CONTROL ROLLOUTS WEIGHTS` tries every learner endpoint, once with a CURVE key pair of its own
(made by `asyncrl keys` on its host, beside a copy of the learner's public server key) and
once in plaintext, and prints what came back as one JSON line."""

from __future__ import annotations

import json
import sys

import zmq

from asyncrl.protocol.sockets import SocketFactory, load_curve_keys
from tests.integration.test_curve import _probe


def main(key_dir: str, control: str, rollouts: str, weights: str) -> None:
    endpoints = {"control": control, "rollouts": rollouts, "weights": weights}
    ctx = zmq.Context()
    keyed = SocketFactory(context=ctx, curve=load_curve_keys(key_dir, "client", "intruder"))
    result = {"own_key": _probe(keyed, endpoints), "plaintext": _probe(ctx, endpoints)}
    ctx.term()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:5])
