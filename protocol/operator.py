"""Operator messages: `asyncrl ctl` asks the learner's hub, over its control socket, to show
or change the settings that can change on a live run.

Values travel as text (`field=value`, the value JSON or a bare string) so the hub, which owns
the tunable set (`learner.hub.tuning`), can refuse each field with its own one-line reason
instead of the codec refusing the whole message. Registered with the codec on import (the
codec imports this module).
"""

from __future__ import annotations

from dataclasses import field

from asyncrl.protocol.messages import Message, message

TUNE_OPS = ("get", "set", "history")
# Kept well inside the control socket's 64 KiB header limit in both directions.
MAX_CHANGES = 32
MAX_HISTORY_REPLY = 100


@message("tune")
class Tune(Message):
    """`op`: `get` (every tunable's live value), `set` (apply `changes`, each `field=value`,
    between two events of the hub) or `history` (the changes so far, oldest first)."""

    op: str
    changes: list[str] = field(default_factory=list)


@message("tune_reply")
class TuneReply(Message):
    """`applied`: the fields a `set` changed; `refused`: `field: reason`, one line each (a
    refused request as a whole names the field `*`); `values`: `field=JSON` for every tunable
    after the operation; `history`: one JSON object per change (time, version, field, old,
    new, by), oldest first, at most `MAX_HISTORY_REPLY`."""

    op: str
    learner_version: int
    applied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
