"""Kill -9 during checkpoint saves, N times; after each kill a complete checkpoint must load.

Run by tests/integration/test_checkpoint_kill.py as `python ckpt_kill_worker.py OUT TRIALS
SEED`. The engine is built once; each trial forks a child that resumes from whatever the
last kill left (cleaning it up) and saves version after version until it is SIGKILLed a
random time (within about three saves) after it has resumed. The parent then checks, with
the learner's own restore logic, that a checkpoint remains, that it is never older than the
one verified before, and that its contents are those of its version: the hub state saved
with it and a parameter the child filled with the version number before saving. Prints one
JSON line of what the kills hit.

A forked child cannot run gloo collectives (the process group's threads stay in the
parent); with one rank DeepSpeed's barrier and tag check have nothing to agree on, so the
child replaces them with no-ops.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

KEEP = 2


class FakeHub:
    """The hub surface checkpoints use; its state is the version it was saved at."""

    def __init__(self) -> None:
        self.version = -1

    def state_dict(self) -> dict:
        return {"saved_at": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.version = state["saved_at"]

    def on_checkpoint_saved(self, version: int) -> None:
        pass  # the real hub notes it in its audit log

    def advance_version(self, version: int) -> None:
        assert version == self.version, (version, self.version)

    def stats(self) -> dict:
        return {"waiting": 0}


def build(out: Path):
    import threading

    import tqdm
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # tqdm's default lock is a multiprocessing semaphore, shared with forked children: a
    # child killed while holding it would block the parent's next progress bar forever.
    tqdm.tqdm.set_lock(threading.RLock())
    hf_logging.disable_progress_bar()

    from asyncrl.launch.config import load_config
    from asyncrl.launch.tiny import build_tokenizer, tiny_model_config
    from asyncrl.learner.checkpoint import Checkpointer
    from asyncrl.learner.engine import Engine, init_distributed

    cfg = load_config(None, ["train.zero_stage=0", "tiny.hidden_size=32", "tiny.num_layers=1"])
    model_dir = out / "model"
    tokenizer = build_tokenizer()
    AutoModelForCausalLM.from_config(tiny_model_config(cfg.tiny)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    torch.set_num_threads(1)
    rank, world = init_distributed("cpu")
    engine = Engine(str(model_dir), cfg.train, "float32", "cpu", rank, world, 8)
    return Checkpointer(engine, tokenizer, str(out / "run"), keep=KEEP, export=True)


def marker(ckpt) -> torch.Tensor:
    return ckpt.engine.model.get_input_embeddings().weight


def save(ckpt, hub: FakeHub, version: int) -> None:
    with torch.no_grad():
        marker(ckpt).fill_(float(version))
    hub.version = version
    ckpt.save(hub, version)


def child(ckpt, ready: int) -> None:
    import deepspeed.comm as dc

    dc.barrier = lambda *a, **k: None
    dc.all_reduce = lambda *a, **k: None
    hub = FakeHub()
    version = ckpt.restore(hub)
    os.write(ready, b"x")
    while True:
        version += 1
        save(ckpt, hub, version)


def leftovers(run: Path) -> list[str]:
    """What the kill interrupted, read from the directories it left."""
    from asyncrl.learner import ckpt_files as cf

    seen = []
    for sub in ("checkpoint", "export"):
        d = run / sub
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(cf.TMP_PREFIX):
                seen.append(f"{sub}/tmp")
            elif p.name.startswith(cf.TRASH_PREFIX):
                seen.append(f"{sub}/trash")
        if len(cf.complete_tags(d)) > KEEP:
            seen.append(f"{sub}/unpruned")
    return sorted(set(seen)) or ["clean"]


def verify(ckpt, before: int) -> int:
    from asyncrl.learner import ckpt_files as cf

    hub = FakeHub()
    version = ckpt.restore(hub)
    assert version >= before, f"resumed at {version}, older than {before}"
    assert cf.tag_version(ckpt.last_tag) == version
    assert hub.version == version, "hub state of another version"
    assert torch.all(marker(ckpt) == float(version)), "weights of another version"
    for tag in cf.complete_tags(ckpt.exports):
        stamp = json.loads((ckpt.exports / tag / "asyncrl_version.json").read_text())
        assert stamp["policy_version"] == cf.tag_version(tag), tag
    return version


def main() -> None:
    out, trials, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    ckpt = build(out)
    t = time.monotonic()
    save(ckpt, FakeHub(), 1)
    # Kills spread over about the first three saves after the child has resumed.
    window = 3 * (time.monotonic() - t)
    version, hits, saves = 1, [], 0
    for _ in range(trials):
        ready, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                child(ckpt, ready_w)
            finally:
                os._exit(1)
        os.close(ready_w)
        # The restore is not what is under test: each kill falls during saving.
        assert os.read(ready, 1) == b"x", "child died while resuming"
        os.close(ready)
        time.sleep(rng.uniform(0.0, window))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), f"child ended by itself: {status}"
        hits += leftovers(out / "run")
        new = verify(ckpt, version)
        saves += new - version
        version = new
    print(
        json.dumps(
            {
                "trials": trials,
                "saves": saves,
                "version": version,
                "hits": hits,
                "exported": check_export(out, version),
            }
        )
    )


def check_export(out: Path, version: int) -> str:
    """`asyncrl export` of the surviving checkpoint holds that version's weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from asyncrl.learner.export import export_checkpoint

    path = export_checkpoint(str(out / "run" / "checkpoint"), str(out / "exported"))
    stamp = json.loads((path / "asyncrl_version.json").read_text())
    assert stamp["policy_version"] == version, stamp
    tensors = load_file(path / "model.safetensors")
    assert torch.all(tensors["model.embed_tokens.weight"] == float(version))
    model = AutoModelForCausalLM.from_pretrained(path)
    assert torch.all(model.get_input_embeddings().weight == float(version))
    return str(path)


if __name__ == "__main__":
    main()
