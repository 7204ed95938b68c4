"""Checkpoints and the Hugging Face exports of the policy.

DeepSpeed saves module, optimizer, scheduler and step counters; what it does not hold goes
into its client state: the policy version, the hub's state (gate counters, prompt cursor,
waiting groups) and the RNG states. Each checkpoint also carries the model's config and
tokenizer (`hf/`), so `asyncrl export` can turn it into a model directory on its own.

Layout under `learner.output_dir` (the file protocol is in ckpt_files.py):
    checkpoint/latest        the tag to resume from
    checkpoint/v<N>/         complete checkpoints, the newest `train.keep_checkpoints`
    export/v<N>/             the HF export of each kept checkpoint (`train.export_checkpoints`)
    export/                  the final export's files themselves (hard links into export/v<N>)

With a learned critic (advantage.name=gae) each tag also holds the critic's DeepSpeed state
in `v<N>/critic/`, and each export the critic as a Hugging Face model in `critic/` (loadable
with critic.init=path), so both models are saved, resumed and exported together.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from asyncrl.learner import ckpt_files as cf
from asyncrl.learner.engine import Engine, broadcast_text

logger = logging.getLogger(__name__)

HF_META = "hf"  # the model config and tokenizer inside each checkpoint
CRITIC = "critic"  # the critic's DeepSpeed tag inside a checkpoint, its export inside an export
VERSION_FILE = "asyncrl_version.json"


def checkpoint_dir(output_dir: str) -> Path:
    return Path(output_dir) / "checkpoint"


def export_dir(output_dir: str) -> Path:
    return Path(output_dir) / "export"


class Checkpointer:
    """Saves, restores and exports one run's checkpoints. Every method is collective: every
    rank calls it; rank 0 alone touches the shared directories, other ranks write only their
    own DeepSpeed shards. `hub` is None off rank 0."""

    def __init__(
        self,
        engine: Engine,
        tokenizer,
        output_dir: str,
        keep: int,
        export: bool,
        critic: Engine | None = None,
    ):
        self.engine, self.tokenizer, self.critic = engine, tokenizer, critic
        self.root, self.exports = checkpoint_dir(output_dir), export_dir(output_dir)
        self.keep, self.export = keep, export
        # This run's complete checkpoints, oldest first: pruning keeps the newest `keep` of
        # them and deletes any other tag, such as a previous run's in the same directory.
        self.lineage: list[str] = []
        self.last_tag: str | None = None

    def save(self, hub, version: int) -> str:
        """A new complete checkpoint at `version` (and its export); returns its tag."""
        t = time.time()
        rank0 = self.engine.rank == 0
        tag = None
        if rank0:
            self.root.mkdir(parents=True, exist_ok=True)
            cf.clean_stale(self.root)
            cf.clean_stale(self.exports)
            tag = cf.next_tag(self.root, version)
        tag = broadcast_text(tag, self.engine.world)
        client = {
            "policy_version": version,
            "hub": hub.state_dict() if hub is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
        }
        # DeepSpeed ends its save with a barrier: once it returns every rank's shard is written.
        self.engine.save_checkpoint(str(self.root), cf.TMP_PREFIX + tag, client)
        if self.critic is not None:
            # Inside the tag's temporary directory: committed (renamed) with the policy's.
            self.critic.save_checkpoint(str(self.root / (cf.TMP_PREFIX + tag)), CRITIC, {})
        if rank0:
            meta = self.root / f"{cf.TMP_PREFIX}{tag}" / HF_META
            self.engine.model.config.save_pretrained(meta)
            self.tokenizer.save_pretrained(meta)
            if self.critic is not None:
                self.critic.model.config.save_pretrained(meta / CRITIC)
            cf.commit(self.root, tag)
            cf.write_pointer(self.root, tag)
            if hub is not None:
                hub.on_checkpoint_saved(version)
            self.lineage.append(tag)
            # Complete and pointed at: older ones may go, before the export (which a kill
            # may interrupt save after save) can delay it.
            gone = cf.prune(self.root, self.lineage[-self.keep :])
        if self.export:
            self._export(tag, version)
        if rank0:
            if self.exports.is_dir():
                cf.prune(self.exports, self.lineage[-self.keep :])
            logger.info(
                "checkpoint %s (version %d) saved in %.1fs%s",
                tag,
                version,
                time.time() - t,
                f"; deleted {', '.join(gone)}" if gone else "",
            )
        self.last_tag = tag
        if self.engine.world > 1:
            torch.distributed.barrier()
        return tag

    def restore(self, hub) -> int:
        """Load the newest complete checkpoint into the engine, the RNGs and (rank 0) the
        hub; returns the policy version it was saved at."""
        tag = None
        if self.engine.rank == 0:
            cf.clean_stale(self.root)
            cf.clean_stale(self.exports)
            tag = cf.resolve(self.root)
        tag = broadcast_text(tag, self.engine.world)
        if tag is None:
            raise FileNotFoundError(
                f"--resume: no complete checkpoint in {self.root}; start without --resume or "
                "set learner.output_dir to the run's directory"
            )
        client = self.engine.load_checkpoint(str(self.root), tag)
        version = int(client["policy_version"])
        if self.critic is not None:
            if not (self.root / tag / CRITIC).is_dir():
                raise FileNotFoundError(
                    f"--resume: checkpoint {self.root / tag} holds no critic (the run was "
                    "started without advantage.name=gae); resume with the same advantage"
                )
            self.critic.load_checkpoint(str(self.root / tag), CRITIC)
            if self.engine.rank == 0:
                logger.info("resumed the critic from %s", self.root / tag / CRITIC)
        torch.set_rng_state(client["rng"]["torch"])
        np.random.set_state(client["rng"]["numpy"])
        # Older complete tags are this run's history too: they are pruned as new ones come.
        key = cf.tag_key(tag)
        self.lineage = [t for t in cf.complete_tags(self.root) if cf.tag_key(t) <= key]
        self.last_tag = tag
        if hub is not None:
            hub.load_state_dict(client["hub"])
            hub.advance_version(version)
            logger.info(
                "resumed from %s at version %d with %d waiting groups",
                self.root / tag,
                version,
                hub.stats()["waiting"],
            )
        return version

    def final_export(self, version: int) -> None:
        """The policy's files directly in `export/` (the path a run's model has always had),
        linked from the last checkpoint's export or written fresh."""
        if not self.export or self.last_tag is None:
            self._export(f"final-v{version}", version)
            source = self.exports / f"final-v{version}"
        else:
            source = self.exports / self.last_tag
        if self.engine.rank == 0:
            publish_files(source, self.exports)
            if self.critic is not None:
                (self.exports / CRITIC).mkdir(exist_ok=True)
                publish_files(source / CRITIC, self.exports / CRITIC)
            if not self.export or self.last_tag is None:
                cf.remove(self.exports, source.name)

    def _export(self, name: str, version: int) -> None:
        """`export/<name>` written under a temporary name and renamed when complete."""
        tensors = self.engine.cpu_parameters()  # collective under ZeRO-3
        critic = self.critic.cpu_parameters() if self.critic is not None else None
        if self.engine.rank != 0:
            return
        self.exports.mkdir(parents=True, exist_ok=True)
        tmp = self.exports / f"{cf.TMP_PREFIX}{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        write_hf_model(self.engine.model, self.tokenizer, tensors, version, tmp)
        if critic is not None:
            write_hf_model(self.critic.model, self.tokenizer, critic, version, tmp / CRITIC)
        if (self.exports / name).exists():
            cf.remove(self.exports, name)
        cf.commit(self.exports, name)


def write_hf_model(model, tokenizer, tensors: dict, version: int, out: Path) -> None:
    """safetensors + config + tokenizer + our version file in `out`."""
    model.save_pretrained(
        out, state_dict={k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    )
    tokenizer.save_pretrained(out)
    (out / VERSION_FILE).write_text(json.dumps({"policy_version": version}))


def publish_files(source: Path, dest: Path) -> None:
    """Each file of `source` placed in `dest` by hard link (a copy where the filesystem has
    none), each replaced atomically; files of an earlier export that the new one lacks are
    removed. The version file goes last, so it never names weights not yet in place."""
    names = sorted(
        (p.name for p in source.iterdir() if p.is_file()), key=lambda n: n == VERSION_FILE
    )
    for name in names:
        tmp = dest / f"{cf.TMP_PREFIX}{name}"
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(source / name, tmp)
        except OSError:
            shutil.copy2(source / name, tmp)
        os.replace(tmp, dest / name)
    for p in dest.iterdir():
        if p.is_file() and p.name not in names:
            p.unlink()
    cf.fsync_dir(dest)
