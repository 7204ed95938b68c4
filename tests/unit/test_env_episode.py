"""Multi-turn episodes as one token sequence: a hand-written three-turn episode's loss mask,
logprobs and versions (a weight update between turns tags later tokens), the limits' finish
reasons, and the wire message a generator builds from it passing validation."""

from __future__ import annotations

import numpy as np
import pytest

from asyncrl.generators.backends.base import Sample
from asyncrl.generators.envs.build import final_answer
from asyncrl.generators.envs.episode import EpisodeLimits, EpisodeRunner
from asyncrl.generators.envs.render import ChatRenderer
from asyncrl.generators.envs.tool_env import ToolEnvironment
from asyncrl.generators.envs.tools import calculator
from asyncrl.launch.tiny_agent import build_agent_tokenizer, tool_call_text
from asyncrl.protocol.codec import decode, encode
from asyncrl.protocol.messages import RolloutGroup
from asyncrl.protocol.settings import SamplingParams
from asyncrl.protocol.validate import RolloutLimits, validate_rollout


@pytest.fixture(scope="module")
def tok():
    return build_agent_tokenizer()


class Scripted:
    """A backend that answers turn k of every episode with script[k], each token with
    logprob -0.5 and the version it holds."""

    def __init__(self, tok, script: list[str]):
        self.tok, self.script, self.version, self.turn = tok, script, 3, 0
        self.contexts: list[list[int]] = []

    def __call__(self, contexts, params):
        out = []
        for c in contexts:
            self.contexts.append([int(x) for x in c])
            text = self.script[self.turn]
            ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            ids = ids[: params.max_new_tokens]
            stop = len(ids) <= params.max_new_tokens and ids[-1] == self.tok.eos_token_id
            out.append(
                Sample(
                    np.array(ids, np.int32),
                    np.full(len(ids), -0.5, np.float32),
                    np.full(len(ids), self.version, np.int32),
                    "stop" if stop else "length",
                )
            )
        self.turn += 1
        return out


FOUR_TURNS = EpisodeLimits(max_turns=4)


def _runner(tok, backend, limits=FOUR_TURNS, tools=(calculator,)):
    renderer = ChatRenderer(tok)

    def between_turns():
        backend.version = 4  # the learner published version 4 while turn 1 was scored

    runner = EpisodeRunner(
        backend,
        lambda: ToolEnvironment(list(tools)),
        renderer,
        limits,
        lambda: backend.version,
        between_turns,
    )
    return runner, renderer


def test_three_turn_episode_mask_logprobs_versions(tok):
    script = [tool_call_text("1+2"), tool_call_text("3*3"), "9"]
    backend = Scripted(tok, script)
    runner, renderer = _runner(tok, backend)
    prompt = np.array(tok("1+2=", add_special_tokens=False)["input_ids"], np.int32)
    (s,) = runner.run(prompt, 1, SamplingParams(max_new_tokens=100))
    # Hand-derived token counts (one token per character, per known word, per tag):
    # turn 1: <tool_call> { " name " : " calculator " , " arguments " : { " expression " : "
    #   1 + 2 " } } </tool_call> <eos> = 1 + 25 + 1 + 1 = 28 tokens; the tool's answer is
    #   <tool_response> 3 </tool_response> = 3 tokens; turn 2 the same shape as turn 1 = 28
    #   tokens, its answer <tool_response> 9 </tool_response> = 3; turn 3: 9 <eos> = 2.
    expected_mask = [1] * 28 + [0] * 3 + [1] * 28 + [0] * 3 + [1] * 2
    assert s.mask.tolist() == expected_mask
    assert s.finish_reason == "stop"
    assert s.logprobs.tolist() == [-0.5 if m else 0.0 for m in expected_mask]
    # Turn 1 and the observation after it carry version 3; the update between turns tags
    # every later token (model and environment) with 4.
    assert s.versions.tolist() == [3] * 31 + [4] * 33
    assert tok.decode(s.tokens[28:31].tolist()) == "<tool_response>3</tool_response>"
    # Token-in/token-out: turn 3 was asked to continue the exact sampled ids, no re-encoding.
    assert backend.contexts[2] == prompt.tolist() + s.tokens[:62].tolist()
    assert final_answer(renderer, s) == ("9", tok("9", add_special_tokens=False)["input_ids"])

    # The wire message a generator builds from it validates, and survives the codec.
    msg = RolloutGroup(
        lease_id="ab" * 16,
        generator_id="g",
        tokens=s.tokens,
        logprobs=s.logprobs,
        versions=s.versions,
        lengths=np.array([len(s.tokens)], np.int32),
        finish_reasons=[s.finish_reason],
        generate_seconds=0.1,
        loss_mask=s.mask,
        env_rewards=np.zeros(1, np.float32),
    )
    back = decode(encode(msg))
    assert back.loss_mask.tolist() == expected_mask
    validate_rollout(back, RolloutLimits(vocab_size=len(tok), max_new_tokens=100), 1, 4, 3)
    assert back.version == 3  # the oldest model token's version


def test_limits_end_episodes_with_their_reasons(tok):
    call = tool_call_text("1+2")
    prompt = np.array(tok("1+2=", add_special_tokens=False)["input_ids"], np.int32)
    # Calls forever: the third model turn is the last one.
    runner, _ = _runner(tok, Scripted(tok, [call] * 5), EpisodeLimits(max_turns=3))
    (s,) = runner.run(prompt, 1, SamplingParams(max_new_tokens=200))
    assert s.finish_reason == "max_turns" and int(s.mask.sum()) == 3 * 28
    # Budget 40: turn 1 (28) + its answer (3) fit, turn 2 is cut at the 9 tokens left.
    runner, _ = _runner(tok, Scripted(tok, [call] * 5))
    (s,) = runner.run(prompt, 1, SamplingParams(max_new_tokens=40))
    assert s.finish_reason == "budget" and len(s.tokens) == 40
    # A turn limit below the call's length: the turn is cut, the episode ends with `length`.
    runner, _ = _runner(tok, Scripted(tok, [call]), EpisodeLimits(max_turns=3, max_turn_tokens=10))
    (s,) = runner.run(prompt, 1, SamplingParams(max_new_tokens=200))
    assert s.finish_reason == "length" and s.mask.tolist() == [1] * 10


def test_several_episodes_keep_their_order(tok):
    # Two episodes of one group share every backend call while their room is the same.
    backend = Scripted(tok, [tool_call_text("2+2"), "4"])
    runner, _ = _runner(tok, backend)
    prompt = np.array(tok("2+2=", add_special_tokens=False)["input_ids"], np.int32)
    a, b = runner.run(prompt, 2, SamplingParams(max_new_tokens=100))
    assert a.tokens.tolist() == b.tokens.tolist() and a.finish_reason == "stop"
    assert backend.turn == 2  # two turns, each one backend call for both episodes
