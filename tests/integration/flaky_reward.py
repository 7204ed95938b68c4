"""A reward plug-in that raises on a third of the prompts (for test_local)."""

from __future__ import annotations

import zlib


def score(prompts, completions, **row):
    if zlib.crc32(prompts[0].encode()) % 3 == 0:
        raise ValueError("flaky reward")
    return [1.0 if c.strip() == str(row["answer"]).strip() else 0.0 for c in completions]
