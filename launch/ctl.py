"""`asyncrl ctl`: show or change a running learner's live settings.

    asyncrl ctl --learner tcp://HOST:5555 get
    asyncrl ctl --learner tcp://HOST:5555 set buffer.max_staleness=4 sampling.temperature=0.9
    asyncrl ctl --learner tcp://HOST:5555 history

One request, one reply, over the learner's control socket; under CURVE with an operator key
(`asyncrl keys --operators NAME`, then `--curve-dir DIR --operator NAME`). What the learner
accepts, and why it refuses the rest, is `learner.hub.tuning`'s business.
"""

from __future__ import annotations

import json
import sys

import zmq

from asyncrl.protocol.operator import Tune, TuneReply
from asyncrl.protocol.settings import SecurityConfig
from asyncrl.protocol.sockets import recv, send, setup_socket_factory


class CtlError(RuntimeError):
    """No usable answer from the learner (one line for the operator)."""


def request(
    learner: str,
    op: str,
    changes: list[str] | tuple[str, ...] = (),
    curve_dir: str | None = None,
    operator: str = "operator",
    timeout: float = 10.0,
) -> TuneReply:
    """Send one `Tune` to the learner at `learner` (its control address) and return the
    reply; CtlError when none comes within `timeout` seconds."""
    security = SecurityConfig(curve_dir=curve_dir, client_name=operator)
    factory = setup_socket_factory(security, "client")
    sock = factory.socket(zmq.DEALER, server=False)
    try:
        sock.connect(learner)
        sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        try:
            send(sock, Tune(op, list(changes)))
        except zmq.Again:
            raise CtlError(f"could not reach the learner at {learner}") from None
        if not sock.poll(int(timeout * 1000)):
            raise CtlError(
                f"no reply from {learner} within {timeout:.0f}s (wrong address, or under "
                "CURVE: not an allowed key, see --curve-dir/--operator)"
            )
        _, reply = recv(sock)
    finally:
        sock.close(linger=0)
    if not isinstance(reply, TuneReply):
        raise CtlError(f"unexpected reply {reply.TYPE!r} from {learner}")
    return reply


def main(args) -> int:
    """The command: print the reply (`--json`: one JSON object); exit 0, 1 when anything was
    refused, 2 when the learner did not answer."""
    try:
        reply = request(
            args.learner, args.op, args.changes, args.curve_dir, args.operator, args.timeout
        )
    except CtlError as exc:
        print(f"asyncrl ctl: {exc}", file=sys.stderr)
        return 2
    values = dict(v.split("=", 1) for v in reply.values)
    if args.json:
        out = {
            "op": reply.op,
            "learner_version": reply.learner_version,
            "applied": reply.applied,
            "refused": reply.refused,
            "values": {k: json.loads(v) for k, v in values.items()},
            "history": [json.loads(h) for h in reply.history],
        }
        print(json.dumps(out))
    elif reply.op == "history":
        for h in reply.history:
            print(h)
    elif reply.op == "set" and reply.applied:
        for name in reply.applied:
            print(f"{name}={values.get(name, '?')}  (applied at version {reply.learner_version})")
    elif reply.op == "get":
        for k, v in values.items():
            print(f"{k}={v}")
    for line in reply.refused:
        print(f"asyncrl ctl: refused {line}", file=sys.stderr)
    if reply.refused and reply.op == "set":
        print("asyncrl ctl: nothing was applied (a set applies all or nothing)", file=sys.stderr)
    return 1 if reply.refused else 0
