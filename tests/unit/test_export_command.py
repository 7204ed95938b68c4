"""`asyncrl export` errors: one line naming the path, exit 1."""

from __future__ import annotations


def test_export_command_names_what_is_wrong(tmp_path, capsys):
    from asyncrl.launch.cli import main

    assert main(["export", "--checkpoint", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"asyncrl export: {tmp_path}: not a checkpoint")
