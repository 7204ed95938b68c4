"""The configured environment: a factory of fresh environments, its tool schemas, and the
episode runner a generator (or the learner's held-out evaluation, through the launch layer)
plays episodes with."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from asyncrl.generators.backends.base import Sample
from asyncrl.generators.envs.base import Environment
from asyncrl.generators.envs.config import EnvConfig
from asyncrl.generators.envs.episode import Episode, EpisodeLimits, EpisodeRunner
from asyncrl.generators.envs.render import ChatRenderer
from asyncrl.generators.envs.sandbox import SandboxLimits, network_isolated, python_tool
from asyncrl.generators.envs.tool_env import MALFORMED, UNKNOWN, ToolEnvironment
from asyncrl.generators.envs.tools import calculator
from asyncrl.protocol.settings import SamplingParams

logger = logging.getLogger(__name__)

# Episodes the held-out evaluation plays side by side.
EVAL_BATCH = 64


def load_object(spec: str, what: str):
    """The attribute named by `module:name` or `path/file.py:name`."""
    where, _, name = spec.rpartition(":")
    if where.endswith(".py") or "/" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{what} {spec!r}: no such file {str(path)!r}")
        mod_name = "asyncrl_env_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            loader = importlib.util.spec_from_file_location(mod_name, path)
            if loader is None or loader.loader is None:
                raise ValueError(f"{what} {spec!r}: cannot load {str(path)!r}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
            sys.modules[mod_name] = module
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"{what} {spec!r}: cannot import {where!r} ({e})") from e
    obj = getattr(module, name, None)
    if obj is None or not callable(obj):
        raise ValueError(f"{what} {spec!r}: {where!r} has no callable {name!r}")
    return obj


def build_tools(cfg: EnvConfig) -> list[Callable]:
    tools = []
    for spec in cfg.tools:
        if spec == "calculator":
            tools.append(calculator)
        elif spec == "python":
            p = cfg.python
            limits = SandboxLimits(
                cpu_seconds=p.cpu_seconds,
                memory_bytes=p.memory_mb << 20,
                wall_seconds=min(p.wall_seconds, cfg.tool_timeout_seconds),
                output_chars=p.output_chars,
                isolate_network=p.isolate_network,
            )
            if p.isolate_network and not network_isolated():
                logger.warning(
                    "python tool: no network namespace available here (unshare -rn failed); "
                    "its code is not cut off from the network"
                )
            tools.append(python_tool(limits))
        else:
            tools.append(load_object(spec, "tool"))
    return tools


def env_factory(cfg: EnvConfig, prompt_field: str = "prompt") -> Callable[[], Environment]:
    """Builds a fresh environment per episode; checks the configuration once, now."""
    if cfg.name == "tool":
        tools = build_tools(cfg)

        def make() -> Environment:
            return ToolEnvironment(
                tools, cfg.tool_timeout_seconds, cfg.max_calls_per_turn, prompt_field
            )

    elif cfg.name == "none":
        raise ValueError("env.name is none: no environment to build")
    else:
        cls = load_object(cfg.name, "environment")

        def make() -> Environment:
            return cls(**cfg.options)

    make()  # a broken tool or plug-in fails at start
    return make


def tool_schemas(cfg: EnvConfig) -> list[dict]:
    """What the chat template gets as `tools=` (the learner renders prompts with them)."""
    if not cfg.enabled:
        return []
    return list(env_factory(cfg)().tool_schemas)


def _record(metrics, labels: frozenset[str]):
    """Episode metrics; tool labels outside the bounded set count as `other`."""

    def on_episode(ep: Episode) -> None:
        metrics.episode_turns.observe(ep.turns)
        metrics.episodes.labels(finish=ep.finish).inc()
        metrics.env_seconds.inc(ep.env_seconds)
        metrics.env_tokens.inc(sum(int((m == 0).sum()) for m in ep.mask))
        for tool, outcome in ep.tool_calls:
            metrics.tool_calls.labels(
                tool=tool if tool in labels else "other", outcome=outcome
            ).inc()

    return on_episode


def episode_factory(cfg: EnvConfig, tokenizer, prompt_field: str = "prompt"):
    """What `GeneratorWorker(episodes=...)` takes: (backend, between_turns, metrics) ->
    EpisodeRunner. Builds and checks the environment and the chat rendering now."""
    make = env_factory(cfg, prompt_field)
    schemas = list(make().tool_schemas)
    renderer = ChatRenderer(tokenizer, schemas)
    limits = EpisodeLimits(cfg.max_turns, cfg.max_turn_tokens)
    labels = frozenset([s["function"]["name"] for s in schemas] + [UNKNOWN, MALFORMED])

    def build(backend, between_turns, metrics) -> EpisodeRunner:
        return EpisodeRunner(
            backend.continue_batch,
            make,
            renderer,
            limits,
            lambda: backend.version,
            between_turns,
            _record(metrics, labels),
        )

    return build


def episode_evaluator(cfg: EnvConfig, prompt_field: str = "prompt"):
    """Held-out evaluation of multi-turn episodes for the learner (handed to it by the launch
    layer): fn(model, tokenizer, prompt_ids, samples, greedy, max_new_tokens) -> (a list per
    prompt of (final answer text, its token ids), statistics). Sampled with the hf backend's
    code around the learner's model, so evaluation renders and samples as generators do."""
    make = env_factory(cfg, prompt_field)
    limits = EpisodeLimits(cfg.max_turns, cfg.max_turn_tokens)

    def evaluate(model, tokenizer, prompt_ids, samples: int, greedy: bool, max_new_tokens: int):
        from asyncrl.generators.backends.hf import HFBackend

        backend = HFBackend.around(model, tokenizer)
        renderer = ChatRenderer(tokenizer, list(make().tool_schemas))
        episodes: list[Episode] = []

        def turns(contexts, params):
            return backend.continue_batch(contexts, params, greedy=greedy)

        runner = EpisodeRunner(turns, make, renderer, limits, lambda: 0, None, episodes.append)
        params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
        n = 1 if greedy else samples
        step = max(1, EVAL_BATCH // n)  # sequences per backend call stay near EVAL_BATCH
        out = []
        for i in range(0, len(prompt_ids), step):
            for row in runner.run_many(prompt_ids[i : i + step], n, params):
                out.append([final_answer(renderer, s) for s in row])
        return out, episode_stats(episodes)

    return evaluate


def final_answer(renderer: ChatRenderer, sample: Sample) -> tuple[str, list[int]]:
    """The last model turn of an episode: its text (up to the stop token, special tokens
    dropped) and token ids; what rewards score."""
    ids = [int(t) for t in last_model_turn(sample.tokens, sample.mask)]
    eos = renderer.eos_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return renderer.tokenizer.decode(ids, skip_special_tokens=True), ids


def last_model_turn(tokens: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The tokens of the last run of mask-1 tokens (all of them without a mask)."""
    if mask is None or not len(tokens):
        return tokens
    env = np.flatnonzero(mask == 0)
    start = int(env[-1]) + 1 if env.size else 0
    return tokens[start:]


def episode_stats(episodes: list[Episode]) -> dict[str, float]:
    """Turns, tool-call success and finish reasons of evaluation episodes."""
    if not episodes:
        return {}
    calls = [o for ep in episodes for _, o in ep.tool_calls]
    out = {
        "eval_turns_mean": sum(ep.turns for ep in episodes) / len(episodes),
        "eval_tool_calls_per_episode": len(calls) / len(episodes),
        "eval_tool_call_success": (sum(o == "ok" for o in calls) / len(calls)) if calls else 0.0,
    }
    return out
