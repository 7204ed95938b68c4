"""Bucket planning of the nccl transport and its wire form (learner/nccl.py, NcclPlan)."""

from __future__ import annotations

import pytest
import torch

from asyncrl.learner.publishers.nccl_channel import plan_buckets
from asyncrl.learner.weights import serialize_named_tensors
from asyncrl.protocol.codec import decode, encode
from asyncrl.protocol.messages import NcclPlan


def test_buckets_are_byte_ranges_of_the_blob_split_by_size_and_alignment():
    tensors = {
        "a": torch.arange(6, dtype=torch.float32),  # 24 bytes
        "b": torch.arange(5, dtype=torch.float32),  # 20 bytes: 24 + 20 = 44 <= 48, same bucket
        "c": torch.arange(3, dtype=torch.bfloat16),  # 6 bytes: 50 > 48, new bucket at 44
        "d": torch.arange(2, dtype=torch.float32),  # at 6 bytes into c's bucket: 6 % 4 != 0
        "e": torch.arange(20, dtype=torch.float32),  # 80 bytes, larger than a bucket: alone
    }
    blob = serialize_named_tensors(tensors)
    buckets = plan_buckets(blob, bucket_bytes=48)
    assert [b.names for b in buckets] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert [b.end - b.start for b in buckets] == [44, 6, 8, 80]
    # Contiguous, in order, and covering the data section exactly.
    assert all(x.end == y.start for x, y in zip(buckets, buckets[1:]))
    assert buckets[-1].end == len(blob)
    # Each range holds its tensors' bytes, concatenated: what SGLang's flattened bucket is.
    first = bytes(blob[buckets[0].start : buckets[0].end])
    assert first == tensors["a"].numpy().tobytes() + tensors["b"].numpy().tobytes()
    assert buckets[1].dtypes == ["bfloat16"] and buckets[3].shapes == [[20]]


def test_plan_survives_the_wire_and_rejects_inconsistent_fields():
    plan = NcclPlan(
        3, "xxh3:0", names=["a", "b", "c"], dtypes=["float32"] * 3,
        ranks=[2, 0, 1], dims=[4, 5, 7], counts=[2, 1],
    )  # fmt: skip
    got = decode(encode(plan))
    # a is 4x5, b a scalar, c has 7 elements; buckets [a, b] and [c].
    assert got.buckets() == [
        (["a", "b"], ["float32"] * 2, [[4, 5], []]),
        (["c"], ["float32"], [[7]]),
    ]
    for bad in (
        dict(counts=[2, 2]),  # counts cover four tensors, three are named
        dict(dims=[4, 5]),  # fewer dims than the ranks ask for
        dict(counts=[3, 0]),  # an empty bucket
    ):
        broken = NcclPlan(**{**plan.__dict__, **bad})
        with pytest.raises(ValueError):
            broken.buckets()
