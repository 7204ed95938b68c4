"""Checks a role runs before it loads anything heavy (DeepSpeed, the model, an engine), so that
a wrong path, an unreadable dataset or a missing answer column costs a second and one line on
stderr instead of minutes and a traceback.

Order: the model directory (file system only), the data files (every row parsed and checked,
no tokenizer needed), then the tokenizer (imports transformers and torch, seconds), what needs
it (chat-format prompts need a chat template), and a dry run of a user's reward plug-in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from asyncrl.learner.data import DataError, read_rows
from asyncrl.learner.rewards.config import LABELLED_REWARDS, eval_reward_config

if TYPE_CHECKING:
    from asyncrl.launch.config import AsyncRLConfig

# What a Hub repository id looks like (`org/name`); only accepted when the user allows it.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
# Errors a tokenizer of a broken or foreign directory raises while loading.
_TOKENIZER_ERRORS = (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError)


class PreflightError(ValueError):
    """An input that would stop the run later; the message is one line saying where."""


def preflight(cfg: AsyncRLConfig, role: str) -> None:
    """Everything `role` (learner, generator, local) will read, checked. Raises PreflightError."""
    model_dir = check_model_dir(cfg)
    check_metrics_http(cfg, role)
    rows = {}
    # Rank 0 owns the prompts; other ranks (perhaps on hosts without the files) skip them.
    if role == "local" or (role == "learner" and os.environ.get("RANK", "0") == "0"):
        rows = check_data(cfg)
        if cfg.reward.name == "reward_model" and cfg.reward.reward_model_path:
            _check_local_model(cfg.reward.reward_model_path, "reward.reward_model_path")
    if model_dir is not None:  # None: the embedded tiny model, which its role builds
        tokenizer = check_tokenizer(model_dir)
        for loaded, where in rows.values():
            check_chat_prompts(loaded, where, cfg.data.prompt_field, tokenizer)
    if "data.train_path" in rows:
        train_rows, where = rows["data.train_path"]
        dry_run_reward(cfg, train_rows[0], where[0])


def check_metrics_http(cfg: AsyncRLConfig, role: str) -> None:
    """The /metrics server's TLS files and basic-auth file load (they are read only when the
    server starts, after the model)."""
    import ssl

    from asyncrl.launch.serve import auth_header, http_options, ssl_context

    sections = {"learner": ["learner"], "generator": ["generator"]}.get(
        role, ["learner", "generator"]
    )
    for name in sections:
        options = http_options(getattr(cfg, name))
        try:
            ssl_context(options)
            auth_header(options.auth_file)
        except (OSError, ValueError, ssl.SSLError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PreflightError(f"{name}.metrics_tls_* / metrics_auth_file: {detail}") from None


def check_model_dir(cfg: AsyncRLConfig) -> str | None:
    """model.path: a local Hugging Face model directory, or a Hub id when allowed.
    None: the embedded tiny model."""
    path = cfg.model.path
    if path is None:
        return None
    if not Path(path).expanduser().exists() and _HUB_ID.match(path):
        if cfg.model.allow_hub_download:
            return path
        raise PreflightError(
            f"model.path: {path}: no such directory; to download it from the Hugging Face Hub "
            "set model.allow_hub_download=true"
        )
    _check_local_model(path, "model.path")
    return str(Path(path).expanduser())


def _check_local_model(path: str, field: str) -> None:
    p = Path(path).expanduser()
    if not p.exists():
        raise PreflightError(f"{field}: {path}: no such directory")
    if not p.is_dir():
        raise PreflightError(f"{field}: {path}: a file; expected a Hugging Face model directory")
    if not (p / "config.json").is_file():
        raise PreflightError(
            f"{field}: {path}: no config.json; not a Hugging Face model directory "
            "(save_pretrained writes one)"
        )
    if not any(next(p.glob(pattern), None) for pattern in _WEIGHTS):
        raise PreflightError(f"{field}: {path}: no weights (*.safetensors or *.bin)")


def check_tokenizer(model_dir: str):
    """The tokenizer loads; returns it."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its warnings would break the one-line rule
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except _TOKENIZER_ERRORS as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PreflightError(
            f"model.path: {model_dir}: the tokenizer does not load ({type(e).__name__}: {first})"
        ) from None
    finally:
        transformers.logging.set_verbosity(level)
    # Without its files transformers still builds the config's tokenizer class, empty.
    if not tokenizer("1 + 1 = 2", add_special_tokens=False)["input_ids"]:
        raise PreflightError(
            f"model.path: {model_dir}: the tokenizer has no vocabulary (tokenizer.json or the "
            "vocabulary files missing?)"
        )
    return tokenizer


def label_fields(cfg: AsyncRLConfig) -> dict[str, tuple[str, str]]:
    """Which row field each dataset must have, and the setting that names it: the built-in
    rewards that compare with a ground truth (exact, math) read `reward.answer_field`, in
    training and in the evaluation (`eval.functions`, else the training reward with ttrl
    scored as math)."""
    need = (cfg.reward.answer_field, "reward.answer_field")
    scored = eval_reward_config(cfg.reward, cfg.eval.functions)
    out = {}
    if {spec for spec, _ in cfg.reward.resolved()} & set(LABELLED_REWARDS):
        out["data.train_path"] = need
    if {spec for spec, _ in scored.resolved()} & set(LABELLED_REWARDS):
        out["data.eval_path"] = need
    return out


def check_data(cfg: AsyncRLConfig) -> dict[str, tuple[list[dict], list[str]]]:
    """Every row of the train and eval files parses and has the prompt and label fields."""
    labels = label_fields(cfg)
    out = {}
    for field, path in (
        ("data.train_path", cfg.data.train_path),
        ("data.eval_path", cfg.data.eval_path),
    ):
        if path is None:
            continue
        if not Path(path).expanduser().exists():
            raise PreflightError(f"{field}: {path}: no such file or directory")
        try:
            rows, where = read_rows(str(Path(path).expanduser()))
        except DataError as e:
            raise PreflightError(str(e)) from None
        need = [(cfg.data.prompt_field, "data.prompt_field")]
        if field in labels:
            need.append(labels[field])
        for row, loc in zip(rows, where):
            for name, setting in need:
                if row.get(name) is None:
                    raise PreflightError(
                        f"{loc}: no field {name!r} ({setting}); the row has {_keys(row)}"
                    )
            _check_prompt_value(row[cfg.data.prompt_field], loc, cfg.data.prompt_field)
        out[field] = (rows, where)
    return out


def _keys(row: dict) -> str:
    keys = [repr(k) for k in list(row)[:8]]
    return ", ".join(keys) + (", ..." if len(row) > 8 else "") if keys else "no fields"


def _check_prompt_value(value, loc: str, name: str) -> None:
    if isinstance(value, str):
        return
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value
    )
    if not ok:
        raise PreflightError(
            f"{loc}: field {name!r} must be a string or a list of {{role, content}} messages, "
            f"got {type(value).__name__}"
        )


def check_chat_prompts(rows, where, prompt_field: str, tokenizer) -> None:
    """Message-list prompts go through the chat template: the tokenizer must have one."""
    if getattr(tokenizer, "chat_template", None):
        return
    for row, loc in zip(rows, where):
        if isinstance(row[prompt_field], list):
            raise PreflightError(
                f"{loc}: the prompt is a message list but the tokenizer of model.path has no "
                "chat template; use a chat model or plain-text prompts"
            )


def dry_run_reward(cfg: AsyncRLConfig, row: dict, loc: str) -> None:
    """Hook: call the configured plug-ins once on the first train row, so a plug-in that does
    not import or does not accept its arguments fails here. Plug-ins only: the built-in
    rewards start worker processes or load models, which a preflight should not."""
    plugins = [spec for spec, _ in cfg.reward.resolved() if ":" in spec]
    if not plugins:
        return
    from asyncrl.learner.rewards.combine import CombinedReward, dry_run

    only = cfg.reward.model_copy(
        update={"functions": plugins, "weights": None, "name": "exact", "plugin": None}
    )
    only.overlong = only.overlong.model_copy(update={"enabled": False})
    try:
        CombinedReward(only).close()
    except (ValueError, ImportError) as e:  # a plug-in that does not import or resolve
        raise PreflightError(str(e).splitlines()[0]) from None
    try:
        dry_run(only, row, cfg.data.prompt_field)
    except Exception as e:  # the user's code: any failure is reported, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PreflightError(
            f"reward plug-in {', '.join(plugins)}: fails on {loc} ({type(e).__name__}: {first})"
        ) from None
