"""`asyncrl export` errors: one line naming the path, exit 1."""

from __future__ import annotations


def test_export_command_names_what_is_wrong(tmp_path, capsys):
    from asyncrl.launch.cli import main

    assert main(["export", "--checkpoint", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"asyncrl export: {tmp_path}: not a checkpoint")


class _Payload:
    """Unpickling this would run a command: what a hostile checkpoint file carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_model_states_are_read_by_the_restricted_loader(tmp_path):
    import numpy as np
    import pytest
    import torch

    from asyncrl.learner.export import ExportError, load_states

    # What DeepSpeed writes: tensors, plain containers, numpy arrays (RNG state): read back.
    good = tmp_path / "good.pt"
    torch.save({"module": {"w": torch.ones(2)}, "rng": np.arange(3, dtype=np.uint32)}, good)
    state = load_states(good)
    assert state["rng"].tolist() == [0, 1, 2] and state["module"]["w"].sum() == 2
    # A file whose unpickling would run code is refused with its path, and nothing runs.
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pt"
    torch.save({"module": {}, "x": _Payload(marker)}, bad)
    with pytest.raises(ExportError, match=f"{bad}: refused by the safe loader"):
        load_states(bad)
    assert not marker.exists()
