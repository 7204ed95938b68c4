"""Intake: a returned group is validated on the socket thread, scored in the reward pool,
filtered and handed to the ledger, which decides what its lease's end means for the gate.

validate (socket thread, under the hub lock, cheap) → decode and score (a reward-pool thread
and worker process, no lock) → filter and accept or reject (the pool thread, under the lock).
While its reward is pending the group keeps its gate capacity (still in flight); a group
dropped for any reason frees it.
"""

from __future__ import annotations

import numpy as np

from asyncrl.buffer.leases import LeaseRecord
from asyncrl.buffer.replay import BufferedGroup
from asyncrl.learner.data import PromptSource
from asyncrl.learner.hub.core import HubCore
from asyncrl.learner.hub.generators import Generators
from asyncrl.learner.hub.groups import GroupData
from asyncrl.learner.hub.keep import keep_indices, keep_rng
from asyncrl.learner.rewards import RewardInput, has_variance
from asyncrl.learner.rewards.pool import Failed, Outcome, RewardJob, RewardPool
from asyncrl.protocol.codec import ProtocolError
from asyncrl.protocol.messages import RolloutGroup
from asyncrl.protocol.validate import RolloutLimits, validate_rollout

# retry_after of a gate denial when capacity may free without a new version
# (`Intake.gate_retry_after`), and otherwise (a new version's announcement wakes it sooner).
GATE_RETRY_SOON = 0.05
GATE_RETRY_VERSION = 0.5


class Intake:
    def __init__(
        self,
        core: HubCore,
        prompts: PromptSource,
        tokenizer,
        pool: RewardPool,
        generators: Generators,
        on_accepted,
    ):
        """`on_accepted()` runs under the lock after a group entered the buffer (gauges,
        waking the trainer)."""
        self.core = core
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pool = pool
        self.generators = generators
        self.on_accepted = on_accepted
        self.limits = RolloutLimits(
            vocab_size=len(tokenizer),
            max_new_tokens=core.cfg.sampling.max_new_tokens,
            min_logprob=core.cfg.learner.min_logprob,
        )
        cfg = core.cfg
        self.keep_mode = cfg.reward.ttrl.keep
        self.seed = cfg.train.seed
        self.test_time = cfg.data.test_time
        self.answer_field = cfg.reward.answer_field
        self.prompt_field = core.cfg.data.prompt_field
        self.max_failures = core.cfg.reward.max_consecutive_failures
        self.failures_in_row = 0  # groups failed in the reward since the last one scored
        self.last_failure = ""
        # Groups handed to the reward pool and not yet scored (under the lock): their leases
        # hold gate capacity that a drop may free at any moment.
        self.scoring = 0

    def failing(self) -> str | None:
        """Under the lock: why the run should end, once `reward.max_consecutive_failures`
        groups in a row failed in the reward; None while it is fine."""
        if self.max_failures and self.failures_in_row >= self.max_failures:
            last = " ".join(self.last_failure.split())  # one line, bounded
            last = last if len(last) <= 300 else last[:297] + "..."
            return (
                f"the reward failed on {self.failures_in_row} groups in a row "
                f"(reward.max_consecutive_failures); last: {last}"
            )
        return None

    def gate_retry_after(self) -> float:
        """retry_after of a gate denial. A group being scored may be dropped, and one in
        flight may be dropped or expire, freeing its capacity with no new version (whose
        announcement would wake the generator): while the learner is short of a step's groups,
        ask again soon. Otherwise only a new version opens the gate, or nobody is waiting."""
        led = self.core.ledger
        starved = led.in_flight > 0 and led.waiting < self.core.cfg.train.groups_per_step
        return GATE_RETRY_SOON if self.scoring > 0 or starved else GATE_RETRY_VERSION

    # ------------------------------------------------------------ socket thread
    def on_rollout(self, msg: RolloutGroup, key: str, now: float) -> None:
        """A group from the rollouts socket; `key` is its sender's CURVE key ("" without CURVE).
        It completes its lease only with the lease's secret id, generator id and key."""
        core, gid = self.core, msg.generator_id
        with core.lock:
            got = core.ledger.on_group_received(msg.lease_id, gid, key)
            if isinstance(got, str):
                # wrong_holder leaves the real holder's lease open; the detail never names
                # the holder (a probe learns nothing but the reason).
                core.drop(got, f"lease {msg.lease_id[:8]}... from {gid[:64]!r} is {got}")
                return
            rec = got
            try:
                validate_rollout(msg, self.limits, rec.group_size, core.version, rec.issued_version)
            except ProtocolError as exc:
                # The message's fault, not the prompt's: the ledger re-issues it (`invalid`);
                # the drop is counted by what was wrong.
                core.ledger.on_group_rejected(rec, "invalid")
                core.drop(exc.reason, f"group from {gid}: {exc}")
                return
            self.generators.touch(gid, None, int(msg.versions.max(initial=0)), now)
            self.generators.record_work(gid, float(msg.lengths.sum()), msg.generate_seconds)
            self.scoring += 1
        # The loop reads a rollout only while the pool has room, and only it submits.
        submitted = self.pool.submit(
            lambda: self._job(msg, rec), lambda out: self._scored(msg, rec, out)
        )
        if not submitted:
            raise RuntimeError("reward pool queue full although the loop checked for room")

    # ------------------------------------------------------------ pool threads
    def _job(self, msg: RolloutGroup, rec: LeaseRecord) -> RewardJob:
        prompt = self.prompts.prompts[rec.prompt_index]
        slices = msg.sample_slices()
        samples = [msg.tokens[s] for s in slices]
        if msg.loss_mask is not None:
            # Rewards score an episode's final answer: its last model turn.
            samples = [last_model_turn(msg.tokens[s], msg.loss_mask[s]) for s in slices]
        row, withheld = prompt.row, None
        if self.test_time:
            # Test-time RL: no reward sees the label; it only feeds label metrics.
            withheld = row.get(self.answer_field)
            row = {k: v for k, v in row.items() if k != self.answer_field}
        inp = RewardInput(
            prompt=row.get(self.prompt_field, prompt.text),
            prompt_text=prompt.text,
            completions=[self._decode(ids) for ids in samples],
            completion_ids=[ids.tolist() for ids in samples],
            row=row,
            step=int(msg.version),
            finish_reasons=list(msg.finish_reasons),
            episodes=msg.loss_mask is not None,
            withheld_label=withheld,
        )
        # Read per group: `reward.weights` may change on a live run (learner.hub.tuning).
        job = RewardJob(inp, weights=[w for _, w in self.core.cfg.reward.resolved()])
        if msg.baseline_tokens is not None:
            job.baseline = self._decode(msg.baseline_tokens)
            job.baseline_ids = msg.baseline_tokens.tolist()
        return job

    def _decode(self, ids: np.ndarray) -> str:
        ids = ids.tolist()
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _scored(self, msg: RolloutGroup, rec: LeaseRecord, out: Outcome) -> None:
        core, gid = self.core, msg.generator_id
        with core.lock:
            self.scoring -= 1
        if isinstance(out, Failed):
            with core.lock:
                self.failures_in_row += 1
                self.last_failure = out.detail
                if self.failing():
                    core.lock.notify_all()  # the trainer's wait ends the run
                core.ledger.on_group_rejected(rec, out.cause)
                if out.cause == "reward_timeout":
                    core.drop("reward_timeout", f"group from {gid}: {out.detail}")
                else:
                    # A reward that fails on one group (a plug-in bug, a row without the
                    # answer field) must not end intake for everyone: drop it, count it.
                    core.metrics.reward_errors.inc()
                    core.drop("reward_error", f"reward failed on a group from {gid}: {out.detail}")
            return
        slices = msg.sample_slices()
        # TTRL: the reward voted over the lease's N samples; G of them are trained on (G read
        # per group: sampling.group_size may change on a live run).
        kept = keep_indices(
            len(slices),
            min(self.core.cfg.sampling.group_size, len(slices)),
            self.keep_mode,
            keep_rng(self.seed, msg.lease_id),
            out.clusters,
        )
        rewards = np.asarray(out.rewards, dtype=np.float32)[kept]
        if msg.env_rewards is not None:
            rewards = rewards + msg.env_rewards[kept]  # the environment's per-turn rewards
        data = GroupData(
            prompt=self.prompts.prompts[rec.prompt_index],
            responses=[np.array(msg.tokens[slices[i]]) for i in kept],
            logprobs=[np.array(msg.logprobs[slices[i]]) for i in kept],
            versions=[np.array(msg.versions[slices[i]]) for i in kept],
            rewards=rewards,
            finish_reasons=[msg.finish_reasons[i] for i in kept],
            generator_id=gid,
            baseline_reward=out.baseline_reward,
            reward_metrics=dict(out.metrics),
            masks=None
            if msg.loss_mask is None
            else [np.array(msg.loss_mask[slices[i]]) for i in kept],
        )
        with core.lock:
            self.failures_in_row = 0
            core.metrics.samples_unkept.inc(len(slices) - len(kept))
            # Read under the lock: buffer.filter_zero_variance may change on a live run.
            if core.cfg.buffer.filter_zero_variance and not has_variance(rewards.tolist()):
                core.ledger.on_group_rejected(rec, "filtered")
                core.drop("filtered")
                return
            group = BufferedGroup(msg.lease_id, rec.prompt_index, msg.version, data.nbytes, data)
            self.generators.seen.add(gid)
            core.drop_all(core.ledger.on_group_accepted(rec, group))
            self.on_accepted()


def last_model_turn(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The tokens after an episode's last environment token: its final model turn."""
    env = np.flatnonzero(mask == 0)
    return tokens[int(env[-1]) + 1 :] if env.size else tokens
