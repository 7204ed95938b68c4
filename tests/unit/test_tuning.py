"""Live tuning: the ledger's events for η, reuse and group size (counters derived in comments
from `capacity(v) = (v + η + 1) * B - accepted - in_flight`), the hub answering `Tune` over
its real control socket (who may tune, what is refused, the audit), checkpoints keeping live
values, and batches that mix two group sizes after a change."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from asyncrl.launch.config import load_config
from asyncrl.learner.data import PromptSource
from asyncrl.learner.hub import Hub
from asyncrl.learner.hub.peers import Sender
from asyncrl.learner.hub.tuning import TUNABLES
from asyncrl.learner.loss_config import AdvantageConfig
from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.learner.step import build_batch
from asyncrl.protocol.messages import Hello, Refused, Welcome
from asyncrl.protocol.operator import Tune, TuneReply
from asyncrl.protocol.sockets import (
    SocketFactory,
    create_curve_keys,
    load_curve_keys,
    operator_keys,
)
from tests.unit.test_hub import CharTokenizer, Generator
from tests.unit.test_ledger import _counter, _holder, _lease, _ledger, _return


# ------------------------------------------------------------------ ledger events
def test_lowering_eta_drops_what_is_staler_at_the_next_take_and_raising_admits_more():
    led = _ledger(eta=4, B=1)
    prompts = _counter()
    # B=1, η=4, v=0: limit (0+4+1)*1 = 5 groups; take all five, return them at version 0.
    recs = [_lease(led, prompts=prompts) for _ in range(5)]
    assert led.capacity(0) == 0
    for rec in recs:
        _return(led, rec, version=0)
    # Learner at v=2 takes one (staleness 2 <= 4): consumed 1, accepted 5, waiting 4.
    taken, dropped = led.on_groups_taken(1, 2)
    assert len(taken) == 1 and dropped == []
    led.on_staleness_limit_changed(0)
    # η=0 at v=2: capacity (2+0+1)*1 - 5 - 0 = -2: no lease for a generator at version 2.
    assert led.capacity(2) == -2
    assert led.on_lease_requested(_holder("g0"), 2, 2, 0.0, prompts).reason == "gate"
    # The next take at v=2 drops the four waiting groups (staleness 2 > 0) as stale and
    # frees their capacity: accepted 5-4 = 1, capacity (2+0+1)*1 - 1 = 2.
    taken, dropped = led.on_groups_taken(1, 2)
    assert taken is None and [d.reason for d in dropped] == ["stale"] * 4
    assert (led.accepted, led.capacity(2)) == (1, 2)
    led.on_staleness_limit_changed(4)
    # η=4 again: capacity (2+4+1)*1 - 1 = 6.
    assert led.capacity(2) == 6
    with pytest.raises(ValueError):
        led.on_staleness_limit_changed(-1)


def test_lowering_reuse_retires_used_groups_and_group_size_applies_to_new_leases():
    led = _ledger(eta=2, B=1, max_reuse=2)
    a = _return(led, _lease(led), version=0)
    taken, _ = led.on_groups_taken(1, 0)
    # Used once with max_reuse 2: it stays for more (waiting 1, uses 1).
    assert taken == [a] and led.waiting == 1 and a.uses == 1
    led.on_reuse_limit_changed(0)
    # max_reuse 0 allows no second use: retired at once; it was consumed, so the gate
    # keeps counting it accepted (accepted 1, consumed 1).
    assert led.waiting == 0 and (led.accepted, led.consumed) == (1, 1)
    led.on_group_size_changed(2)
    assert _lease(led).group_size == 2


# ------------------------------------------------------------------ the hub over its socket
def _hub(tmp_path=None, operators=frozenset(), overrides=()) -> Hub:
    cfg = load_config(
        None,
        [
            "learner.bind_host=127.0.0.1",
            "learner.control_port=0",
            "learner.rollouts_port=0",
            "learner.weights_port=0",
            "train.groups_per_step=1",
            "sampling.group_size=4",
            "sampling.max_new_tokens=8",
            "buffer.max_staleness=4",
            "reward.name=exact",
            "reward.workers=1",
            *overrides,
        ],
    )
    tok = CharTokenizer()
    rows = [{"prompt": "2+2=", "answer": "4"} for _ in range(3)]
    factory = None
    if cfg.security.curve_dir:
        factory = SocketFactory(curve=load_curve_keys(cfg.security.curve_dir, "server"))
    hub = Hub(cfg, PromptSource(rows, tok, "prompt"), tok, LearnerMetrics(), factory, operators)
    hub.start()
    return hub


def _metric(hub, name: str, **labels) -> float:
    return hub.metrics.registry.get_sample_value(name, labels or None)


def test_set_get_history_over_the_control_socket_with_audit():
    hub = _hub()
    ctl = Generator(hub, "ctl")
    try:
        reply = ctl.ask(Tune("set", ["buffer.max_staleness=0", "sampling.temperature=0.7"]))
        assert isinstance(reply, TuneReply) and reply.refused == []
        assert reply.applied == ["buffer.max_staleness", "sampling.temperature"]
        # Applied through the ledger (gate and guard) and into the leases' sampling.
        assert hub.core.ledger.gate.max_staleness == 0 == hub.core.ledger.buffer.max_staleness
        assert hub.cfg.sampling.temperature == 0.7
        values = dict(v.split("=", 1) for v in reply.values)
        assert set(values) == set(TUNABLES)
        assert json.loads(values["buffer.max_staleness"]) == 0
        assert _metric(hub, "asyncrl_max_staleness") == 0
        assert _metric(hub, "asyncrl_sampling_temperature") == 0.7
        assert _metric(hub, "asyncrl_config_changes_total", field="buffer.max_staleness") == 1
        hist = [json.loads(h) for h in ctl.ask(Tune("history")).history]
        assert [(h["field"], h["old"], h["new"]) for h in hist] == [
            ("buffer.max_staleness", 4, 0),
            ("sampling.temperature", 1.0, 0.7),
        ]
        assert hist[0]["version"] == 0 and hist[0]["by"] == "127.0.0.1"
        assert ctl.ask(Tune("get")).values == reply.values
    finally:
        ctl.close()
        hub.stop()


@pytest.mark.parametrize(
    "change, reason, label",
    [
        ("train.lr=0.1", "read only at start", "not_tunable"),
        ("buffer.nonsense=1", "no such config field", "unknown"),
        ("buffer.max_staleness=-1", "greater than or equal to 0", "invalid"),
        ("sampling.temperature=hot", "valid number", "invalid"),
        ("sampling.max_new_tokens=9", "at most 8", "ceiling"),
        ("sampling.group_size=5", "at most 4", "ceiling"),
        ("reward.weights=[1.0]", "needs reward.functions", "invalid"),
        ("buffer.max_staleness", "expected field=value", None),
    ],
)
def test_a_set_with_one_refused_change_applies_nothing(change, reason, label):
    hub = _hub()
    ctl = Generator(hub, "ctl")
    try:
        reply = ctl.ask(Tune("set", ["sampling.top_p=0.5", change]))
        assert reply.applied == [] and len(reply.refused) == 1, reply
        assert reason in reply.refused[0], reply.refused
        assert hub.cfg.sampling.top_p == 1.0  # the valid change was not applied either
        if label:
            assert _metric(hub, "asyncrl_config_changes_refused_total", reason=label) == 1
        assert _metric(hub, "asyncrl_config_changes_total", field="sampling.top_p") == 0
    finally:
        ctl.close()
        hub.stop()


def test_without_curve_only_loopback_may_tune_unless_allowed():
    hub = _hub()
    try:
        remote = Sender(b"x", "", "10.1.2.3")
        reply = hub.tuning.handle(Tune("set", ["buffer.max_staleness=1"]), remote)
        assert reply.applied == [] and "loopback" in reply.refused[0]
        assert _metric(hub, "asyncrl_config_changes_refused_total", reason="unauthorized") == 1
        for local in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            assert hub.tuning.handle(Tune("get"), Sender(b"x", "", local)).refused == []
        hub.tuning.allow_remote = True
        assert hub.tuning.handle(Tune("set", ["buffer.max_staleness=1"]), remote).applied
    finally:
        hub.stop()


def test_under_curve_only_operator_keys_tune(tmp_path):
    create_curve_keys(str(tmp_path), ["gen"], ["op"])
    ops = operator_keys(str(tmp_path))
    assert len(ops) == 1
    hub = _hub(operators=ops, overrides=[f"security.curve_dir={tmp_path}"])
    keys = {n: load_curve_keys(str(tmp_path), "client", n) for n in ("gen", "op")}
    gen = Generator(hub, "g", factory=SocketFactory(curve=keys["gen"], linger_ms=0))
    op = Generator(hub, "o", factory=SocketFactory(curve=keys["op"], linger_ms=0))
    try:
        refused = gen.ask(Tune("set", ["buffer.max_staleness=1"]))
        assert refused.applied == [] and "operator key" in refused.refused[0]
        assert op.ask(Tune("set", ["buffer.max_staleness=1"])).applied == ["buffer.max_staleness"]
        assert json.loads(op.ask(Tune("history")).history[0])["by"].startswith("key:")
        # An operator key may tune, never generate: its hello is refused (and counted), so it
        # gets no lease, no weights and no rollout of its is accepted; a generator key's is not.
        reply = op.ask(Hello("o", "fake", -1))
        assert isinstance(reply, Refused) and reply.reason == "operator_key"
        refusals = hub.metrics.hellos_refused.labels(reason="operator_key")._value.get()
        assert refusals == 1
        assert isinstance(gen.ask(Hello("g", "fake", -1)), Welcome)
    finally:
        gen.close()
        op.close()
        hub.stop()


def test_checkpoint_keeps_live_values_unless_the_resume_overrides_them():
    hub = _hub()
    try:
        hub.tuning.handle(
            Tune("set", ["buffer.max_staleness=0", "train.publish_every=3"]),
            Sender(b"x", "", "127.0.0.1"),
        )
        state = hub.state_dict()
    finally:
        hub.stop()
    # Same configuration at resume: the live values come back, with their history.
    again = _hub()
    try:
        again.load_state_dict(state)
        assert again.cfg.buffer.max_staleness == 0 == again.core.ledger.gate.max_staleness
        assert again.cfg.train.publish_every == 3
        assert again.tuning.trainer_settings()["publish_every"] == 3
        assert len(again.tuning.history) == 2
    finally:
        again.stop()
    # η overridden at resume (2, not the 4 the run started with): the override wins.
    override = _hub(overrides=["buffer.max_staleness=2"])
    try:
        override.load_state_dict(state)
        assert override.core.ledger.gate.max_staleness == 2
        assert override.cfg.train.publish_every == 3
    finally:
        override.stop()


# ------------------------------------------------------------------ mixed group sizes
def _group(rewards: list[float]):
    n = len(rewards)
    data = SimpleNamespace(
        rewards=np.array(rewards, np.float32),
        baseline_reward=None,
        masks=None,  # single-turn groups (multi-turn episodes carry a loss mask)
        prompt=SimpleNamespace(token_ids=np.array([5, 6], np.int32)),
        responses=[np.array([7], np.int32)] * n,
        logprobs=[np.array([-0.5], np.float32)] * n,
        reward_metrics={},
    )
    return SimpleNamespace(payload=data)


def test_a_batch_mixing_two_group_sizes_gets_each_groups_advantages():
    adv = AdvantageConfig(name="dr_grpo")
    # dr_grpo: r - mean(group). Group of 4 [1,0,0,1] (mean 0.5) -> [.5,-.5,-.5,.5];
    # group of 2 [1,0] (mean 0.5) -> [.5,-.5]; flat in group order.
    batch, stats = build_batch([_group([1, 0, 0, 1]), _group([1, 0])], adv, pad_id=0)
    assert torch.allclose(batch.advantages, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.5, -0.5]))
    assert stats["reward_mean"] == pytest.approx(3 / 6)
    assert len(batch) == 6


def test_trainer_settings_are_read_under_the_lock():
    hub = _hub(overrides=["train.lr_multiplier=2"])
    try:
        got = {}
        t = threading.Thread(target=lambda: got.update(hub.tuning.trainer_settings()))
        t.start()
        t.join(5)
        assert got == {"temperature": 1.0, "publish_every": 1, "lr_multiplier": 2.0}
    finally:
        hub.stop()


def test_lr_multiplier_scales_the_configured_schedule_idempotently():
    from asyncrl.learner.engine import Engine

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    warmup = 3
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (warmup + 1)))
    engine = SimpleNamespace(_scheduler=sched, train_cfg=SimpleNamespace(lr=0.1))
    opt.step()
    sched.step()
    # After one step: lr = 0.1 * (1+1)/4 = 0.05; with multiplier 0.5: 0.025.
    Engine.set_lr_multiplier(engine, 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    # The same multiplier again (every step, or after a resume) changes nothing.
    Engine.set_lr_multiplier(engine, 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    # The schedule goes on from the scaled base: step 2 -> 0.1 * 0.5 * 3/4 = 0.0375.
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0375)
    Engine.set_lr_multiplier(engine, 1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.075)
    # A raw DeepSpeed scheduler owns the lr: nothing to scale.
    Engine.set_lr_multiplier(SimpleNamespace(_scheduler=None), 2.0)


def test_live_reward_weights_replace_the_configured_ones():
    from asyncrl.learner.rewards import RewardInput
    from asyncrl.learner.rewards.combine import CombinedReward
    from asyncrl.learner.rewards.config import RewardConfig

    cfg = RewardConfig(functions=["exact", "exact"], weights=[1.0, 1.0], answer_field="answer")
    fn = CombinedReward(cfg)
    try:
        inp = RewardInput("2+2=", "2+2=", ["4", "5"], [[1], [2]], {"answer": "4"})
        # exact scores 1 for "4", 0 for "5": configured weights 1+1 -> [2, 0]; live 0.5+0
        # -> [0.5, 0]; weights of another length fall back to the configured ones.
        assert fn(inp).rewards == [2.0, 0.0]
        assert fn(inp, [0.5, 0.0]).rewards == [0.5, 0.0]
        assert fn(inp, [3.0]).rewards == [2.0, 0.0]
    finally:
        fn.close()


def test_keys_command_adds_operator_keys_and_keeps_the_server_key(tmp_path, capsys):
    from asyncrl.launch.cli import main

    assert main(["keys", "--dir", str(tmp_path), "--clients", "gen"]) == 0
    server = (tmp_path / "server.key").read_bytes()
    assert operator_keys(str(tmp_path)) == frozenset()
    # Adding an operator later must not invalidate the keys already copied to generators.
    assert main(["keys", "--dir", str(tmp_path), "--clients", "", "--operators", "alice"]) == 0
    assert (tmp_path / "server.key").read_bytes() == server
    assert (tmp_path / "alice.key_secret").exists()
    assert (tmp_path / "operators" / "alice.key").exists()
    assert len(operator_keys(str(tmp_path))) == 1
    assert "asyncrl ctl --curve-dir" in capsys.readouterr().out
