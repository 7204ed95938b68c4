"""SGLang's HTTP API as pure functions: the request payloads we send and the parsing of what
comes back, testable without a server. Payload shapes follow SGLang's RL guide
(`docs/advanced_features/sglang_for_rl.md`) and `python/sglang/srt/managers/io_struct.py`
(GenerateReqInput, UpdateWeightFromDiskReqInput, InitWeightsUpdateGroupReqInput,
UpdateWeightsFromDistributedReqInput, PauseGenerationReqInput):

- `/generate` takes `input_ids` (token ids: no re-tokenisation drift) and `sampling_params`;
  with `return_logprob` each result's `meta_info.output_token_logprobs` lists
  `[logprob, token_id, text|null]` per sampled token, computed as log softmax(logits / T)
  and not renormalised after top-p/top-k (so keep top_p = 1 and top_k off for exact
  behaviour logprobs, as the default sampling does); `meta_info.finish_reason.type` is
  `stop`, `length` or `abort`; `meta_info.weight_version` echoes the last update's label.
- `/update_weights_from_disk` takes `model_path` and `weight_version`.
- `/init_weights_update_group` takes the rendezvous address, rank offset, world size, group
  name and collective backend; `/update_weights_from_distributed` takes names, dtypes,
  shapes, group_name, flush_cache, weight_version (and `load_format: "flattened_bucket"` for
  one bucketed broadcast).
"""

from __future__ import annotations

import re

import numpy as np

from asyncrl.generators.backends.base import Sample
from asyncrl.protocol.settings import SamplingParams

FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


def parse_version(text: str) -> tuple[int, ...]:
    """'0.5.17' -> (0, 5, 17); '0.5.6.post1' and '0.5.21rc0' keep their leading numbers."""
    return tuple(int(m.group()) if (m := re.match(r"\d+", p)) else 0 for p in text.split(".")[:3])


def build_generate_request(
    prompt_ids: np.ndarray, n: int, params: SamplingParams, greedy: bool = False
) -> dict:
    """`n` copies of one prompt in a batch (SGLang's radix cache shares the prefix)."""
    ids = [int(x) for x in np.asarray(prompt_ids).tolist()]
    return build_continue_request([ids] * n, params, greedy)


def build_continue_request(contexts: list, params: SamplingParams, greedy: bool = False) -> dict:
    """One model turn for each context, sent as token ids (multi-turn episodes: the prompt,
    earlier turns and environment tokens exactly as sampled and rendered, never re-tokenised;
    the radix cache reuses every earlier turn's prefix)."""
    sampling = {
        "temperature": 0.0 if greedy else float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": int(params.top_k) if params.top_k > 0 else -1,
        "max_new_tokens": int(params.max_new_tokens),
    }
    if params.stop:
        sampling["stop"] = list(params.stop)
    return {
        "input_ids": [[int(x) for x in np.asarray(c).tolist()] for c in contexts],
        "sampling_params": sampling,
        "return_logprob": True,
        # -1: logprobs of the generated tokens only, none for the prompt.
        "logprob_start_len": -1,
    }


def parse_generate_response(payload, fallback_version: int) -> list[Sample]:
    """SGLang's /generate result (a list for batched input) -> our samples."""
    items = payload if isinstance(payload, list) else [payload]
    samples = []
    for item in items:
        meta = item.get("meta_info") or {}
        entries = meta.get("output_token_logprobs") or []
        tokens = np.array([int(e[1]) for e in entries], dtype=np.int32)
        logprobs = np.array([float(e[0]) for e in entries], dtype=np.float32)
        reason = meta.get("finish_reason") or {}
        kind = reason.get("type") if isinstance(reason, dict) else str(reason)
        samples.append(
            Sample(
                tokens=tokens,
                logprobs=logprobs,
                versions=_token_versions(meta, len(tokens), fallback_version),
                finish_reason=FINISH.get(kind or "", "abort"),
            )
        )
    return samples


def _token_versions(meta: dict, n: int, fallback: int) -> np.ndarray:
    """Per-token versions. Recent SGLang reports `meta_info.weight_versions`, spans
    `{"version", "start", "end"}` over output tokens, when an update landed while the request
    ran (python/sglang/srt/utils/weight_versions.py, add_weight_versions_to_meta_info);
    older servers report only `weight_version`, the label current when the request finished
    (tokenizer_manager: `meta_info["weight_version"] = server_args.weight_version`)."""
    versions = np.full(n, _version_label(meta.get("weight_version"), fallback), dtype=np.int32)
    for span in meta.get("weight_versions") or []:
        start, end = max(int(span["start"]), 0), min(int(span["end"]), n)
        versions[start:end] = _version_label(span.get("version"), fallback)
    return versions


def _version_label(label, fallback: int) -> int:
    try:
        return int(label)
    except (TypeError, ValueError):
        return fallback


def build_update_from_disk_request(model_path: str, version: int) -> dict:
    return {"model_path": model_path, "weight_version": str(version), "flush_cache": True}


def build_init_weights_group_request(
    master_address: str,
    master_port: int,
    rank_offset: int,
    world_size: int,
    group_name: str = "weight_update_group",
    backend: str = "nccl",
) -> dict:
    return {
        "master_address": master_address,
        "master_port": int(master_port),
        "rank_offset": int(rank_offset),
        "world_size": int(world_size),
        "group_name": group_name,
        "backend": backend,
    }


def build_update_from_distributed_request(
    names: list[str],
    dtypes: list[str],
    shapes: list[list[int]],
    version: int,
    group_name: str = "weight_update_group",
    bucketed: bool = False,
) -> dict:
    if not len(names) == len(dtypes) == len(shapes):
        raise ValueError("names, dtypes and shapes must have one entry per parameter")
    req = {
        "names": list(names),
        "dtypes": list(dtypes),
        "shapes": [list(map(int, s)) for s in shapes],
        "group_name": group_name,
        "flush_cache": True,
        "weight_version": str(version),
    }
    if bucketed:
        req["load_format"] = "flattened_bucket"
    return req
