"""Padding-free forward passes: several sequences of a micro-batch share one row.

A micro-batch arrives right-padded, `[N, L]`. Packed, its sequences are laid end to end in
`R` rows of `W` positions (first fit, longest first), each sequence with its own position ids
starting at 0. Passed to the model with `position_ids`, no attention mask and no cache (a cache
turns the detection off), a Hugging Face model that builds its mask with
`transformers.masking_utils` (sdpa, eager, flex) detects the restarts and attends
block-diagonally; flash-attention turns them into varlen cu_seqlens. Each token then sees
exactly the tokens it sees in its own padded row, at the same positions, so per-token
log-probs and entropies are the unpacked ones; they are scattered back into the `[N, L - 1]`
layout the objectives use (padding positions get 0, which the response mask ignores), so
every objective and aggregation mode works unchanged.

Whether a model keeps packed sequences apart is checked once per engine (`packing_works`):
a model whose attention ignores the restarts would let sequences attend to each other, and
then micro-batches are trimmed to their longest row as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from asyncrl.learner.engine import Batch, lpt_bins
from asyncrl.learner.logprobs import token_entropy, token_logprobs

logger = logging.getLogger(__name__)


@dataclass
class PackedRows:
    """The packed layout of one micro-batch.

    input_ids, position_ids: [R, W]; index: [N * (L - 1)], for each unpacked next-token
    position (i, t) the flat position in the packed `[R, W - 1]` scores, or R * (W - 1) (one
    past the end: a zero) where (i, t) is padding; shape: (N, L)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    index: torch.Tensor
    shape: tuple[int, int]

    @property
    def computed_positions(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device) -> PackedRows:
        return PackedRows(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.index.to(device),
            self.shape,
        )

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Per-token values `[R, W - 1]` (next-token scores of the packed rows) into the
        unpacked `[N, L - 1]` layout; differentiable."""
        flat = torch.cat([packed.reshape(-1), packed.new_zeros(1)])
        n, length = self.shape
        return flat.index_select(0, self.index).reshape(n, length - 1)


def target_width(lengths: list[int], row_tokens: int) -> int:
    """The widest a packed row should be: `row_tokens` (0: four times the longest sequence),
    but never fewer positions than the longest sequence."""
    longest = max(max(lengths, default=1), 1)
    return max(longest, row_tokens or 4 * longest)


def plan_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Sequences (indices into `lengths`) per row of `width`: longest first into the first row
    with room (first-fit decreasing). Deterministic; every row holds at least one sequence."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(width - n)
    return rows


# Row widths tried, in multiples of the longest sequence (each gives a row count), how many
# of the cheapest plans first fit then tries to narrow, and in how many width steps: planning
# runs on the step's path, so it stays under a millisecond for 64 short sequences.
ROW_WIDTHS = (1, 1.5, 2, 3, 4)
REFINED = 3
FIT_TRIES = 4


def spread_rows(lengths: list[int], count: int) -> tuple[list[list[int]], int]:
    """(rows, width): sequences over `count` rows, longest first onto the row holding the
    fewest tokens (`lpt_bins`); empty rows are left out, the width is the fullest row."""
    members, loads = lpt_bins(lengths, count)
    return [r for r in members if r], max(loads, default=0)


def fit_narrower(lengths: list[int], count: int, width: int) -> tuple[list[list[int]], int] | None:
    """First fit (`plan_rows`) into at most `count` rows narrower than `width`, the narrowest
    of FIT_TRIES widths from max(longest, ceil(total / count)) up; None when none fits."""
    longest, total = max(max(lengths, default=1), 1), max(sum(lengths), 1)
    low = max(longest, -(-total // count))
    step = max(1, (width - low) // FIT_TRIES)
    for w in range(low, width, step):
        rows = plan_rows(lengths, w)
        if len(rows) <= count:
            return rows, w
    return None


def balanced_rows(
    lengths: list[int], row_tokens: int, cost: RowCost | None = None
) -> tuple[list[list[int]], int]:
    """(rows, width) no wider than `target_width`: for each row count that a width of
    ROW_WIDTHS times the longest sequence gives (and one more row), the rows balanced
    (`spread_rows`); the REFINED cheapest plans narrowed by first fit where it can; of those
    the cheapest by `cost` (without one: the fewest computed positions, i.e. the least
    filler), ties to the narrower."""
    limit = target_width(lengths, row_tokens)
    longest, total = max(max(lengths, default=1), 1), max(sum(lengths), 1)
    counts = set()
    for k in ROW_WIDTHS:
        n = -(-total // min(limit, int(k * longest)))
        counts |= {n, n + 1}

    def score(plan: tuple[list[list[int]], int]) -> tuple[float, int]:
        rows, width = plan
        return (cost(len(rows), width) if cost is not None else len(rows) * width), width

    plans = sorted(
        ((spread_rows(lengths, n), n) for n in counts if 1 <= n <= len(lengths)),
        key=lambda p: score(p[0]),
    )
    fits = [plan for plan, _ in plans if plan[1] <= limit]
    for plan, n in plans[:REFINED]:
        narrower = fit_narrower(lengths, n, min(plan[1], limit + 1))
        if narrower is not None:
            fits.append(narrower)
    # One sequence per row always fits: the longest is never wider than the limit.
    return min(fits or [([[i] for i in range(len(lengths))], longest)], key=score)


@dataclass(frozen=True)
class RowCost:
    """Forward FLOPs per computed position: `linear` (2 x parameters) plus `attention` (4 x
    layers x hidden) per position of the row attended over, unless attention is varlen
    (flash-attention: each token attends over its own sequence only, whatever the row)."""

    linear: float
    attention: float
    varlen: bool

    @classmethod
    def of(cls, model) -> RowCost:
        cfg = model.config
        params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        layers = getattr(cfg, "num_hidden_layers", 1)
        hidden = getattr(cfg, "hidden_size", 1)
        impl = str(getattr(cfg, "_attn_implementation", "") or "")
        return cls(2.0 * params, 4.0 * layers * hidden, impl.startswith("flash"))

    def __call__(self, rows: int, width: int) -> float:
        per_position = self.linear + (0.0 if self.varlen else self.attention * width)
        return rows * width * per_position


def choose_rows(
    lengths: list[int], row_tokens: int, cost: RowCost | None = None
) -> tuple[list[list[int]], int]:
    """(rows, width). `row_tokens` > 0: rows at most that wide with the least filler. 0: rows
    at most 4 times the longest sequence, the plan `cost` says is cheapest (wider rows compute
    less filler, but where attention is a masked dense product every position pays for its
    whole row); without a cost model, the least filler."""
    return balanced_rows(lengths, row_tokens, None if row_tokens else cost)


def pack(
    input_ids: torch.Tensor, lengths: list[int], row_tokens: int, cost: RowCost | None = None
) -> PackedRows:
    """The packed layout of right-padded `input_ids` [N, L] whose row i holds `lengths[i]`
    tokens. Unused row tails are filler with positions counting up from 0: a block of their
    own, which no real token attends to."""
    n, length = input_ids.shape
    rows, width = choose_rows(lengths, row_tokens, cost)
    ids = torch.zeros(len(rows), width, dtype=input_ids.dtype)
    pos = torch.zeros(len(rows), width, dtype=torch.long)
    pad_slot = len(rows) * (width - 1)
    index = torch.full((n, max(length - 1, 0)), pad_slot, dtype=torch.long)
    for r, members in enumerate(rows):
        offset = 0
        for i in members:
            k = lengths[i]
            ids[r, offset : offset + k] = input_ids[i, :k]
            pos[r, offset : offset + k] = torch.arange(k)
            # Token t of sequence i predicts token t + 1: packed column offset + t, valid for
            # t < k - 1 (the last token's next column is another sequence's first token).
            if k > 1:
                index[i, : k - 1] = r * (width - 1) + offset + torch.arange(k - 1)
            offset += k
        pos[r, offset:] = torch.arange(width - offset)
    return PackedRows(ids, pos, index.reshape(-1), (n, length))


def padding_share(computed: int, real: int) -> float:
    """Share of the positions a forward pass computed that held no token."""
    return 1.0 - real / computed if computed else 0.0


@torch.no_grad()
def packing_works(model, vocab_size: int, device) -> bool:
    """Whether `model` keeps packed sequences apart: logits of two sequences packed in one row
    match their logits unpacked. Collective under ZeRO-3 (every rank runs the same forwards)."""
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 3]
    ids = torch.randint(0, max(vocab_size, 1), (2, 5), generator=gen)
    plan = pack(ids, lengths, row_tokens=sum(lengths))
    was_training = model.training
    model.eval()
    try:
        alone = [
            model(input_ids=ids[i : i + 1, :k].to(device)).logits[0] for i, k in enumerate(lengths)
        ]
        packed = model(
            input_ids=plan.input_ids.to(device),
            position_ids=plan.position_ids.to(device),
            use_cache=False,
        ).logits[0]
    except (TypeError, ValueError) as exc:  # no `position_ids`, or not in this form
        logger.info("packed rows not supported by this model (%s); trimming instead", exc)
        return False
    finally:
        model.train(was_training)
    # plan_rows puts the longer sequence first.
    together = torch.cat([a.float() for a in alone])
    diff = float((packed.float() - together).abs().max())
    scale = float(together.abs().max()) + 1e-6
    # Half-precision models differ by rounding between the two layouts; a model that lets the
    # second sequence see the first differs by the logits' own size.
    tol = 1e-4 if packed.dtype == torch.float32 else 5e-2
    ok = diff <= tol * scale
    if not ok:
        logger.warning(
            "this model's attention does not keep packed sequences apart (max logit "
            "difference %.3g); micro-batches are trimmed to their longest row instead",
            diff,
        )
    return ok


def prepare(mb: Batch, engine, pack_sequences: bool, row_tokens: int) -> Batch:
    """A micro-batch ready for the engine: trimmed to its longest row, with its packed layout
    when packing is on and the model supports it (checked at the first call: every rank makes
    it at the same point, as a ZeRO-3 forward requires)."""
    mb = mb.trimmed()
    layout = None
    if pack_sequences and len(mb):
        if engine.packs is None:
            works = packing_works(engine.model, int(engine.model.config.vocab_size), engine.device)
            engine.packs = RowCost.of(engine.model) if works else False
        if engine.packs:
            lengths = [int(x) for x in mb.attention_mask.sum(1)]
            layout = pack(mb.input_ids, lengths, row_tokens, engine.packs).to(engine.device)
    mb = mb.to(engine.device)
    mb.layout = layout
    return mb


def positions(mb: Batch) -> tuple[int, int]:
    """(positions the forward pass computes, positions holding a token) of a micro-batch."""
    computed = mb.layout.computed_positions if mb.layout is not None else mb.input_ids.numel()
    return int(computed), int(mb.attention_mask.sum())


def score_tokens(
    engine, mb: Batch, temperature: float, entropy: str = "detached"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next-token log-probs [N, L - 1] of a prepared micro-batch, and entropies (`entropy`:
    "grad" differentiable, "detached", or "none"), in the unpacked layout whether or not the
    forward pass ran packed."""
    layout = mb.layout
    if layout is None:
        logits = engine.forward_logits(mb)[:, :-1]
        targets = mb.input_ids[:, 1:]
    else:
        logits = engine.forward_packed(layout.input_ids, layout.position_ids)[:, :-1]
        targets = layout.input_ids[:, 1:]
    lp = token_logprobs(logits, targets, temperature=temperature)
    ent = None
    if entropy == "grad":
        ent = token_entropy(logits, temperature=temperature)
    elif entropy == "detached":
        with torch.no_grad():
            ent = token_entropy(logits.detach(), temperature=temperature)
    if layout is not None:
        lp = layout.unpack(lp)
        ent = layout.unpack(ent) if ent is not None else None
    return lp, ent


@torch.no_grad()
def reference_logprobs(ref_model, mb: Batch, temperature: float) -> torch.Tensor:
    """The frozen reference's next-token log-probs [N, L - 1], in the micro-batch's layout."""
    layout = mb.layout
    if layout is None:
        logits = ref_model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
        return token_logprobs(logits[:, :-1], mb.input_ids[:, 1:], temperature=temperature)
    logits = ref_model(
        input_ids=layout.input_ids, position_ids=layout.position_ids, use_cache=False
    ).logits
    lp = token_logprobs(logits[:, :-1], layout.input_ids[:, 1:], temperature=temperature)
    return layout.unpack(lp)
