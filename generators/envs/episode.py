"""Multi-turn episodes as one token sequence each, with a loss mask.

For a leased prompt, `EpisodeRunner.run` plays `n` episodes side by side: every live episode's
context (prompt, then its tokens so far) goes to the backend for one model turn, each turn is
shown to its environment, and the observations are rendered to tokens and appended. Model
tokens carry their behaviour logprobs and the weights version that sampled them, mask 1;
environment tokens carry logprob 0, the version held when they were appended, mask 0.

Limits: `max_turns` model turns, `max_turn_tokens` per turn, and the episode's budget of
response tokens after the prompt (the lease's `max_new_tokens`, model and environment tokens
alike, so the learner's length limit holds). Finish reasons: `stop` (the environment is done),
`length` (a turn hit its token limit), `budget`, `max_turns`, `tool_timeout`, `abort`.
Weights loaded between turns (`between_turns`) tag later tokens with the new version, exactly
as an in-flight update within one generation does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from asyncrl.generators.backends.base import Sample
from asyncrl.generators.envs.base import Environment
from asyncrl.generators.envs.render import ChatRenderer
from asyncrl.protocol.settings import SamplingParams

logger = logging.getLogger(__name__)

Turns = Callable[[list[np.ndarray], SamplingParams], list[Sample]]


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int = 4
    max_turn_tokens: int = 0  # 0 = whatever is left of the budget


@dataclass
class Episode:
    env: Environment
    prompt: np.ndarray
    tokens: list[np.ndarray] = field(default_factory=list)
    logprobs: list[np.ndarray] = field(default_factory=list)
    versions: list[np.ndarray] = field(default_factory=list)
    mask: list[np.ndarray] = field(default_factory=list)
    length: int = 0
    turns: int = 0
    reward: float = 0.0
    finish: str = ""
    env_seconds: float = 0.0
    tool_calls: list[tuple[str, str]] = field(default_factory=list)

    def add(self, tokens, logprobs, versions, model: bool) -> None:
        n = len(tokens)
        self.tokens.append(np.asarray(tokens, np.int32))
        self.logprobs.append(np.asarray(logprobs, np.float32))
        self.versions.append(np.asarray(versions, np.int32))
        self.mask.append(np.full(n, 1 if model else 0, np.uint8))
        self.length += n

    def sample(self) -> Sample:
        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        return Sample(
            tokens=cat(self.tokens, np.int32),
            logprobs=cat(self.logprobs, np.float32),
            versions=cat(self.versions, np.int32),
            finish_reason=self.finish,
            mask=cat(self.mask, np.uint8),
            env_reward=self.reward,
        )


class EpisodeRunner:
    """Plays episodes with one backend and a fresh environment per episode."""

    def __init__(
        self,
        turns: Turns,
        make_env: Callable[[], Environment],
        renderer: ChatRenderer,
        limits: EpisodeLimits,
        version: Callable[[], int],
        between_turns: Callable[[], None] | None = None,
        on_episode: Callable[[Episode], None] | None = None,
    ):
        self.turns = turns
        self.make_env = make_env
        self.renderer = renderer
        self.limits = limits
        self.version = version
        self.between_turns = between_turns
        self.on_episode = on_episode

    def run(self, prompt_ids: np.ndarray, n: int, params: SamplingParams) -> list[Sample]:
        """`n` episodes of one prompt (a lease's group)."""
        return self.run_many([prompt_ids], n, params)[0]

    def run_many(
        self, prompts: list[np.ndarray], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """`n` episodes of each prompt, all played side by side (held-out evaluation). The
        environment's `reset` gets the prompt's text as the row (leases carry no row)."""
        episodes = []
        for ids in prompts:
            prompt = np.asarray(ids, dtype=np.int32)
            row = {"prompt": self.renderer.tokenizer.decode(prompt)}
            for _ in range(n):
                ep = Episode(self.make_env(), prompt)
                ep.env.reset(row)
                episodes.append(ep)
        self._play(episodes, params)
        samples = [ep.sample() for ep in episodes]
        return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _play(self, episodes: list[Episode], params: SamplingParams) -> None:
        budget = params.max_new_tokens
        live = list(episodes)
        while live:
            if self.between_turns is not None and any(ep.turns for ep in live):
                self.between_turns()
            # Episodes with the same room left share one backend call.
            by_room: dict[int, list[Episode]] = {}
            for ep in live:
                room = budget - ep.length
                if self.limits.max_turn_tokens:
                    room = min(room, self.limits.max_turn_tokens)
                by_room.setdefault(room, []).append(ep)
            for room, eps in by_room.items():
                contexts = [np.concatenate([ep.prompt, *ep.tokens]) for ep in eps]
                sub = params.model_copy(update={"max_new_tokens": room})
                for ep, s in zip(eps, self.turns(contexts, sub)):
                    self._after_turn(ep, s, budget)
            live = [ep for ep in live if not ep.finish]
        for ep in episodes:
            ep.env.close()
            if self.on_episode is not None:
                self.on_episode(ep)
            logger.debug(
                "episode: %d turns, %d tokens, finish %s, tools %s",
                ep.turns,
                ep.length,
                ep.finish,
                ep.tool_calls,
            )

    def _after_turn(self, ep: Episode, s: Sample, budget: int) -> None:
        ep.add(s.tokens, s.logprobs, s.versions, model=True)
        ep.turns += 1
        if s.finish_reason != "stop":
            # Cut off (turn limit or budget) or aborted: no complete message to act on.
            ep.finish = "budget" if ep.length >= budget else s.finish_reason
            return
        t0 = time.monotonic()
        text = self.renderer.turn_text(s.tokens)
        result = ep.env.step({"role": "assistant", "content": text})
        ep.env_seconds += time.monotonic() - t0
        ep.tool_calls += result.tool_calls
        if result.reward is not None:
            ep.reward += float(result.reward)
        if result.finish_reason:
            ep.finish = result.finish_reason
            return
        if result.done:
            ep.finish = "stop"
            return
        if ep.turns >= self.limits.max_turns:
            ep.finish = "max_turns"
            return
        obs = self.renderer.observation_ids(result.observations)
        # The observation and at least one model token must fit in the budget.
        if ep.length + len(obs) >= budget:
            ep.finish = "budget"
            return
        v = self.version()
        ep.add(obs, np.zeros(len(obs)), np.full(len(obs), v), model=False)
