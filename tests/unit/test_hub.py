"""A real `Hub` on loopback, driven by a scripted generator (DEALER + PUSH sockets): hello,
lease, rollout, accepted; and a reward that hangs, which must neither stop the socket loop
nor keep its gate capacity past the deadline. Rewards run in the real pool (one spawned worker)
with the plug-ins of tests/unit/reward_plugins.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from asyncrl.launch.config import load_config
from asyncrl.learner.data import PromptSource
from asyncrl.learner.hub import GroupData, Hub, HubStopped, RewardFailing
from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.protocol.messages import (
    Ack,
    Heartbeat,
    Hello,
    Lease,
    LeaseDenied,
    LeaseRequest,
    RolloutGroup,
    Welcome,
)
from asyncrl.protocol.sockets import SocketFactory, recv, send

EOS = 1


class CharTokenizer:
    """0 pad, 1 eos, then printable ASCII: ' ' is 2, '0' is 18, '~' is 96."""

    eos_token_id = EOS

    def __len__(self) -> int:
        return 2 + 95

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - 30 for c in text]}

    def encode(self, text: str) -> list[int]:
        return self(text)["input_ids"]

    def decode(self, ids, skip_special_tokens=True) -> str:
        return "".join(chr(i + 30) for i in ids if i > EOS)


def _hub(
    prompt: str, timeout: float = 30.0, factory: SocketFactory | None = None, overrides=()
) -> Hub:
    # B=1, η=0: the gate allows (0+0+1)*1 = 1 group in flight or accepted at version 0.
    cfg = load_config(
        None,
        [
            "learner.bind_host=127.0.0.1",
            "learner.control_port=0",
            "learner.rollouts_port=0",
            "learner.weights_port=0",
            "train.groups_per_step=1",
            "sampling.group_size=2",
            "sampling.max_new_tokens=8",
            "buffer.max_staleness=0",
            "reward.name=plugin",
            "reward.plugin=tests.unit.reward_plugins:moody",
            "reward.workers=1",
            f"reward.timeout_seconds={timeout}",
            *overrides,
        ],
    )
    tok = CharTokenizer()
    rows = [{"prompt": prompt, "answer": "4"} for _ in range(3)]
    hub = Hub(cfg, PromptSource(rows, tok, "prompt"), tok, LearnerMetrics(), factory)
    hub.start()
    return hub


class Generator:
    """The generator's side of the wire, one request at a time."""

    def __init__(self, hub: Hub, gid: str = "g0", factory: SocketFactory | None = None):
        self.gid = gid
        f = factory or SocketFactory(linger_ms=0)
        self.control = f.socket(zmq.DEALER, server=False)
        self.control.connect(hub.endpoints["control"])
        self.push = f.socket(zmq.PUSH, server=False)
        self.push.connect(hub.endpoints["rollouts"])

    def ask(self, msg, timeout_ms: int = 5000):
        send(self.control, msg)
        assert self.control.poll(timeout_ms), f"no reply to {type(msg).__name__}"
        return recv(self.control)[1]

    def rollout(self, lease: Lease, completions: list[str], version: int = 0) -> None:
        tok = CharTokenizer()
        ids = [tok.encode(c) + [EOS] for c in completions]
        flat = np.array([t for s in ids for t in s], np.int32)
        group = RolloutGroup(
            lease_id=lease.lease_id,
            generator_id=self.gid,
            tokens=flat,
            logprobs=np.full(len(flat), -0.5, np.float32),
            versions=np.full(len(flat), version, np.int32),
            lengths=np.array([len(s) for s in ids], np.int32),
            finish_reasons=["stop"] * len(ids),
            generate_seconds=0.5,
        )
        send(self.push, group)

    def close(self) -> None:
        self.control.close(0)
        self.push.close(0)


def _dropped(hub: Hub, reason: str) -> float:
    return hub.metrics.dropped.labels(reason=reason)._value.get()


def _wait(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_lease_rollout_accepted_and_taken():
    hub = _hub("2+2=")
    gen = Generator(hub)
    try:
        welcome = gen.ask(Hello("g0", "fake", -1))
        assert isinstance(welcome, Welcome) and welcome.learner_version == 0
        # Without weights (-1) the generator is refused as `version`.
        assert gen.ask(LeaseRequest("g0", -1)) == LeaseDenied("version", 0.5, 0)
        lease = gen.ask(LeaseRequest("g0", 0))
        assert isinstance(lease, Lease) and lease.group_size == 2
        assert CharTokenizer().decode(lease.prompt_ids) == "2+2="
        # Gate: limit (0+0+1)*1 = 1, one in flight -> the next request is refused. The
        # learner has 0 of its 1 group and the one in flight may yet be dropped (or expire),
        # freeing capacity with no new version: retry after 0.05 s.
        assert gen.ask(LeaseRequest("g0", 0)) == LeaseDenied("gate", 0.05, 0)
        # Answer "4": rewards [1, 0] (variance, so not filtered) -> accepted.
        gen.rollout(lease, ["4", "5"])
        _wait(lambda: hub.stats()["waiting"] == 1)
        # Accepted and waiting, 1 of limit 1, nothing in flight or being scored: only a new
        # version opens the gate, retry after 0.5 s (its announcement wakes the generator).
        assert gen.ask(LeaseRequest("g0", 0)) == LeaseDenied("gate", 0.5, 0)
        taken = hub.wait_for_groups(1, threading.Event())
        assert [g.lease_id for g in taken] == [lease.lease_id]
        data: GroupData = taken[0].payload
        assert data.rewards.tolist() == [1.0, 0.0]
        # The EOS token is part of the response sent back; decoding stopped at it.
        assert [r.tolist() for r in data.responses] == [[22, EOS], [23, EOS]]
        stats = hub.stats()
        # accepted 1 (consumed 1, waiting 0), nothing in flight; staleness 0 - 0 = 0.
        assert {k: stats[k] for k in ("accepted", "in_flight", "waiting", "consumed")} == {
            "accepted": 1,
            "in_flight": 0,
            "waiting": 0,
            "consumed": 1,
        }
        assert stats["staleness_counts"] == {0: 1} and stats["generators_seen"] == ["g0"]
        # 4 response tokens (2 per sample with EOS) in 0.5 s of generation: 8 tokens/s.
        assert stats["generation_capacity"] == pytest.approx(8.0)
        # A second copy of the same group is a duplicate, dropped and counted.
        gen.rollout(lease, ["4", "5"])
        _wait(lambda: _dropped(hub, "duplicate") == 1)
    finally:
        gen.close()
        hub.stop()


def test_a_hanging_reward_neither_stops_the_loop_nor_keeps_capacity():
    hub = _hub("hang", timeout=3.0)
    gen = Generator(hub)
    try:
        gen.ask(Hello("g0", "fake", 0))
        lease = gen.ask(LeaseRequest("g0", 0))
        gen.rollout(lease, ["4", "5"])
        # While the reward hangs the group is still in flight: capacity 1 - 0 - 1 = 0. It is
        # being scored and may yet be dropped, freeing capacity without a new version: the
        # denial says to ask again soon (0.05 s), not to wait for the next announcement.
        _wait(lambda: hub.stats()["in_flight"] == 1 and not hub.core.ledger.leases.open)
        assert gen.ask(LeaseRequest("g0", 0)) == LeaseDenied("gate", 0.05, 0)
        # ...and the socket loop answers at once (well inside the 3 s deadline).
        t0 = time.monotonic()
        assert isinstance(gen.ask(Heartbeat("g0", 0, [])), Ack)
        assert time.monotonic() - t0 < 1.0
        # After the deadline: dropped as reward_timeout, capacity free again, and the prompt
        # is not re-issued (nothing queued).
        _wait(lambda: _dropped(hub, "reward_timeout") == 1)
        assert hub.stats()["in_flight"] == 0
        assert not hub.core.ledger.reissue
        assert isinstance(gen.ask(LeaseRequest("g0", 0)), Lease)
        assert hub.metrics.reward_errors._value.get() == 0
    finally:
        gen.close()
        t0 = time.monotonic()
        hub.stop()
        assert time.monotonic() - t0 < 12.0


def test_a_dead_socket_loop_ends_the_run_and_health_says_why():
    hub = _hub("2+2=")
    try:
        # Break the loop outside any handler's guard (as a socket error would): the next
        # turn's announcement check raises.
        def broken():
            raise OSError("socket gone")

        hub.loop.serving.take_announcement = broken
        _wait(lambda: not hub.loop.alive())
        ok, why = hub.healthy()
        assert not ok and why == "hub thread not running: OSError: socket gone"
        # The trainer's wait ends with the reason instead of waiting forever.
        t = time.monotonic()
        with pytest.raises(HubStopped, match="OSError: socket gone"):
            hub.wait_for_groups(1, threading.Event())
        assert time.monotonic() - t < 1.0
    finally:
        hub.stop()


def test_a_reward_failing_on_every_group_ends_the_run():
    # The reward raises on prompt "raise"; with max_consecutive_failures 2 the first failure
    # is dropped and counted, the second ends the trainer's wait with a one-line reason.
    hub = _hub("raise", overrides=("reward.max_consecutive_failures=2",))
    gen = Generator(hub)
    try:
        gen.ask(Hello("g0", "fake", 0))
        gen.rollout(gen.ask(LeaseRequest("g0", 0)), ["4", "5"])
        _wait(lambda: hub.metrics.reward_errors._value.get() == 1)
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        assert hub.wait_for_groups(1, stop) is None  # one failure: the run goes on
        gen.rollout(gen.ask(LeaseRequest("g0", 0)), ["4", "5"])
        with pytest.raises(RewardFailing) as err:
            hub.wait_for_groups(1, threading.Event())
        msg = str(err.value)
        assert "failed on 2 groups in a row (reward.max_consecutive_failures)" in msg
        assert "does not like the prompt" in msg and "\n" not in msg
    finally:
        gen.close()
        hub.stop()


def test_ttrl_lease_asks_for_n_votes_over_n_and_keeps_g_without_the_label():
    # TTRL test time: N = 4 voted, G = 2 kept (stratified), labels withheld from the reward
    # functions (sees_answer would add 10 to every reward if its rows had the answer).
    hub = _hub(
        "2+2=",
        overrides=[
            "reward.functions=[ttrl, 'tests.unit.reward_plugins:sees_answer']",
            "reward.ttrl.vote_size=4",
            "reward.ttrl.keep=stratified",
            "data.test_time=true",
        ],
    )
    gen = Generator(hub)
    try:
        gen.ask(Hello("g0", "fake", -1))
        lease = gen.ask(LeaseRequest("g0", 0))
        assert isinstance(lease, Lease) and lease.group_size == 4
        # G samples for an N lease are refused (and the prompt goes out again).
        gen.rollout(lease, ["4", "4"])
        _wait(lambda: _dropped(hub, "group_size") == 1)
        lease = gen.ask(LeaseRequest("g0", 0))
        # Votes 4, 4, 5, 6 -> label 4, rewards 1 1 0 0, answers (clusters) 0 0 1 2. Keep 2:
        # quotas 2*2/4 = 1, 0.5 -> 0, 0.5 -> 0; the last place goes to the larger remainder,
        # a tie between "5" and "6" (one sample each) won by "5", seen first -> "4", "5".
        gen.rollout(lease, ["4", "4", "5", "6"])
        taken = hub.wait_for_groups(1, threading.Event())
        data: GroupData = taken[0].payload
        tok = CharTokenizer()
        assert [tok.decode(r) for r in data.responses] == ["4", "5"]
        assert data.rewards.tolist() == [1.0, 0.0] and len(data.logprobs) == 2
        # Majority ratio 2/4; the withheld label 4 says the pseudo label is right.
        assert data.reward_metrics["ttrl_majority_frac"] == 0.5
        assert data.reward_metrics["ttrl_label_accuracy"] == 1.0
        assert hub.metrics.samples_unkept._value.get() == 2
        # One group is one group: accepted 1, consumed 1.
        stats = hub.stats()
        assert (stats["accepted"], stats["consumed"], stats["in_flight"]) == (1, 1, 0)
    finally:
        gen.close()
        hub.stop()
