"""Typed configuration of the buffer, gate and leases (the `buffer:` section of a run's YAML).

Lives next to the ledger it configures; `launch/config.py` imports it into the run schema.
"""

from __future__ import annotations

from pydantic import Field

from asyncrl.protocol.settings import StrictModel


class BufferConfig(StrictModel):
    max_staleness: int = Field(
        2,
        ge=0,
        description="η: largest allowed learner version minus rollout version. 0 = synchronous RL.",
    )
    max_groups: int = Field(1024, ge=1, description="Buffer capacity in groups.")
    max_bytes: int = Field(1 << 30, ge=1, description="Buffer capacity in bytes.")
    max_reuse: int = Field(
        0, ge=0, description="Extra times a group may be trained while within η."
    )
    filter_zero_variance: bool = Field(
        True,
        description="Dynamic sampling: drop groups whose "
        "rewards are all equal (no learning signal).",
    )
    lease_seconds: float = Field(
        120.0,
        gt=0,
        description="A lease not returned (or extended "
        "by heartbeats) within this time is re-issued.",
    )
    heartbeat_seconds: float = Field(
        2.0,
        gt=0,
        description="Generator heartbeat interval; a "
        "generator silent for two intervals loses its leases.",
    )
