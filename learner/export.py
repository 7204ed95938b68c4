"""`asyncrl export`: any checkpoint turned into a Hugging Face model directory, offline.

Needs nothing but the checkpoint: the model config and tokenizer travel inside it (`hf/`).
A critic saved with the policy (advantage.name=gae) is exported too, in `critic/`.
Weights come from DeepSpeed's model-states file at ZeRO stages 0-2 (it holds the full
module) and, at stage 3 (where it holds placeholders), from the optimizer's fp32 partitions
through DeepSpeed's own consolidation, cast to the model's dtype.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch

from asyncrl.learner import ckpt_files as cf
from asyncrl.learner.checkpoint import CRITIC, HF_META, VERSION_FILE, export_dir

# DeepSpeed's model-states file: one (full module) below ZeRO-3, one per rank at ZeRO-3.
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def _states_file(tag_dir: Path) -> Path | None:
    return next((tag_dir / n for n in MODEL_STATES if (tag_dir / n).is_file()), None)


class ExportError(ValueError):
    """What the user asked for cannot be exported; the message is one line."""


def load_states(path: Path) -> dict:
    """A DeepSpeed model-states file, read by torch's restricted unpickler: tensors,
    containers and the numpy arrays DeepSpeed keeps in it, nothing that could run code (a
    checkpoint is a file from outside, whoever claims to have written it)."""
    import numpy as np

    multiarray = getattr(np, "_core", np).multiarray
    allowed = [np.ndarray, np.dtype, multiarray._reconstruct]
    allowed += [type(np.dtype(t)) for t in ("bool", "int32", "int64", "uint32", "float32")]
    allowed += [type(np.dtype("float64"))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ExportError(f"{path}: refused by the safe loader ({first})") from exc


def locate(path: Path) -> tuple[Path, str]:
    """(checkpoint root, tag) for a run's `checkpoint/` directory (its resumable tag) or one
    tag directory in it."""
    if _states_file(path) is not None and cf.tag_key(path.name) is not None:
        return path.parent, path.name
    tag = cf.resolve(path) if path.is_dir() else None
    if tag is None:
        raise ExportError(
            f"{path}: not a checkpoint (expected a run's checkpoint/ directory or a "
            "checkpoint/v<N> directory in it)"
        )
    return path, tag


def export_checkpoint(checkpoint: str, output: str | None = None) -> Path:
    """Write the HF model of `checkpoint` to `output` (default: the run's export/<tag>),
    with the critic's in `critic/` when the checkpoint holds one; returns where. Refuses to
    write over an existing directory."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    root, tag = locate(Path(checkpoint))
    meta = root / tag / HF_META
    if not (meta / "config.json").is_file():
        raise ExportError(f"{root / tag}: no model config in the checkpoint ({meta} missing)")
    out = Path(output) if output else export_dir(str(root.parent)) / tag
    if out.exists():
        raise ExportError(f"{out} exists; remove it or pass --output")
    tmp = out.parent / f"{cf.TMP_PREFIX}{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = _write_model(root, tag, meta, AutoModelForCausalLM, tmp)
    version = json.dumps({"policy_version": int(state["policy_version"])})
    (tmp / VERSION_FILE).write_text(version)
    if (root / tag / CRITIC).is_dir():
        if not (meta / CRITIC / "config.json").is_file():
            raise ExportError(f"{root / tag}: no critic config in the checkpoint")
        _write_model(
            root / tag, CRITIC, meta / CRITIC, AutoModelForTokenClassification, tmp / CRITIC
        )
        for f in meta.iterdir():
            if f.is_file() and not (tmp / CRITIC / f.name).exists():
                shutil.copy2(f, tmp / CRITIC / f.name)
        (tmp / CRITIC / VERSION_FILE).write_text(version)
    cf.commit(out.parent, out.name)
    return out


def _write_model(root: Path, tag: str, meta: Path, model_cls, dest: Path) -> dict:
    """The weights of DeepSpeed tag `root/tag` as `model_cls` of the config in `meta`,
    saved to `dest` with the files in `meta`; returns DeepSpeed's state (client state)."""
    from transformers import AutoConfig

    states = _states_file(root / tag)
    if states is None:
        raise ExportError(f"{root / tag}: no DeepSpeed model states in the checkpoint")
    state = load_states(states)
    config = AutoConfig.from_pretrained(meta)
    stage = int((state.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0))
    if stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        dtype = getattr(config, "dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        full = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
        tensors = {k: v.to(dtype) for k, v in full.items()}
    else:
        tensors = state["module"]
    with torch.device("meta"):
        model = model_cls.from_config(config)
    expected = set(model.state_dict())
    missing = expected - set(tensors) - set(_tied(model))
    if missing or set(tensors) - expected:
        raise ExportError(
            f"{root / tag}: weights do not match the model config "
            f"({len(missing)} missing, {len(set(tensors) - expected)} unexpected)"
        )
    model.save_pretrained(dest, state_dict={k: v.contiguous() for k, v in tensors.items()})
    # The tokenizer files as the run saved them: loading and saving again through
    # AutoTokenizer may change its class.
    for f in meta.iterdir():
        if f.is_file() and not (dest / f.name).exists():
            shutil.copy2(f, dest / f.name)
    return state


def _tied(model) -> list[str]:
    """Parameter names that share storage with another (saved once; either may be absent)."""
    keys = getattr(model, "_tied_weights_keys", None) or []
    return list(keys.keys()) if isinstance(keys, dict) else list(keys)
