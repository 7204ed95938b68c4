"""The `hf` backend: in-process transformers sampling with a KV cache.

We sample with our own loop rather than `generate()` because the behaviour logprob must be the
exact log-probability of each sampled token under the distribution it was drawn from
(temperature, then optional top-k/top-p renormalised): that is what the learner's importance
weights divide by.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import numpy as np
import torch

from asyncrl.generators.backends.base import Capabilities, InflightMode, Sample, split_groups
from asyncrl.generators.weights import load_into_model, verify_and_decode
from asyncrl.protocol.settings import SamplingParams

logger = logging.getLogger(__name__)


def truncate_logprobs(logp: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask tokens outside top-k / the top-p nucleus and renormalise. logp: [N, V] log-probs
    (already temperature-scaled). Returns log-probs of the truncated distribution."""
    if top_k and top_k < logp.shape[-1]:
        kth = torch.topk(logp, top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_lp, order = torch.sort(logp, dim=-1, descending=True)
        cum = sorted_lp.exp().cumsum(-1)
        # Keep a token if the mass before it is below top_p (the first token always stays).
        drop_sorted = (cum - sorted_lp.exp()) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = logp.masked_fill(drop, float("-inf"))
    return torch.log_softmax(logp, dim=-1)


class HFBackend:
    """Samples groups with a Hugging Face causal LM on CPU or CUDA."""

    name = "hf"
    capabilities = Capabilities(inflight_loads=True, token_continuation=True, batched_groups=True)

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        dtype: str = "float32",
        seed: int = 0,
        eos_token_id: int | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch_dtype = {
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[dtype]
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
        self._setup(model.to(torch.device(device)), AutoTokenizer.from_pretrained(model_path))
        self._init_sampling(seed, eos_token_id)

    @classmethod
    def around(cls, model, tokenizer, seed: int = 0) -> HFBackend:
        """A backend sampling with a model already in memory (the learner's held-out
        evaluation of multi-turn episodes): same sampling code, no weights of its own."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer)
        self._init_sampling(seed, None)
        return self

    def _setup(self, model, tok) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.tokenizer = tok
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        # transformers 5 renamed the KV-cache argument and output field from past_key_values.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _init_sampling(self, seed: int, eos_token_id: int | None) -> None:
        tok = self.tokenizer
        self.eos_id = eos_token_id if eos_token_id is not None else tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(seed)
        # -1 until the learner's weights are loaded: the files on disk may not be what the
        # learner trains (it may have resumed), so we never claim a version we did not load.
        self.version = -1
        # In-flight weight updates (`set_inflight_hook`): off until a hook is set.
        self._between_tokens: Callable[[], None] | None = None
        self._check_every = 8
        self._inflight_mode: InflightMode = "continue"

    def set_inflight_hook(
        self, hook: Callable[[], None], mode: InflightMode, check_every: int
    ) -> None:
        """`hook` loads newer weights if any were announced; it runs every `check_every`
        decode steps. "continue" keeps the KV cache of earlier tokens (PipelineRL-style),
        "reprefill" recomputes it with the new weights over the prompt and the tokens so far."""
        self._between_tokens = hook
        self._inflight_mode = mode
        self._check_every = check_every

    @torch.no_grad()
    def generate(self, prompt_ids: np.ndarray, n: int, params: SamplingParams) -> list[Sample]:
        return self._sample(prompt_ids, n, params, greedy=False)

    @torch.no_grad()
    def generate_greedy(self, prompt_ids: np.ndarray, max_new_tokens: int) -> np.ndarray:
        params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
        return self._sample(prompt_ids, 1, params, greedy=True)[0].tokens

    @torch.no_grad()
    def continue_batch(
        self, contexts: list[np.ndarray], params: SamplingParams, greedy: bool = False
    ) -> list[Sample]:
        """Contexts of equal length are sampled as one batch (no padding, so positions and
        logprobs are exactly those of a lone sequence); the results keep the input order."""
        by_length: dict[int, list[int]] = {}
        for i, c in enumerate(contexts):
            by_length.setdefault(len(c), []).append(i)
        out: list[Sample | None] = [None] * len(contexts)
        for idx in by_length.values():
            rows = np.stack([np.asarray(contexts[i], dtype=np.int64) for i in idx])
            ids = torch.as_tensor(rows, device=self.device)
            for i, s in zip(idx, self._sample_rows(ids, params, greedy)):
                out[i] = s
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def generate_groups(
        self, prompts: list[np.ndarray], ns: list[int], params: SamplingParams
    ) -> list[list[Sample]]:
        """All groups in one batch. Prompts of unequal length are padded on the left and
        masked, with each row's positions counted from its own first token, so every row
        samples as it would alone; one forward pass per token serves every group (on a small
        model the per-pass overhead, not the arithmetic, is what a group costs)."""
        rows = [np.asarray(p, dtype=np.int64) for p, n in zip(prompts, ns) for _ in range(n)]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, longest - len(r) :] = torch.as_tensor(r)
            mask[i, longest - len(r) :] = 1
        padded = bool((mask == 0).any())
        samples = self._sample_rows(
            ids.to(self.device), params, False, mask.to(self.device) if padded else None
        )
        return split_groups(samples, ns)

    def _sample(
        self, prompt_ids: np.ndarray, n: int, params: SamplingParams, greedy: bool
    ) -> list[Sample]:
        ids = torch.as_tensor(np.asarray(prompt_ids, dtype=np.int64), device=self.device)
        ids = ids.unsqueeze(0).expand(n, -1).contiguous()
        return self._sample_rows(ids, params, greedy)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, past=None):
        """One model call; with `mask` (left padding: 0 on pads) the attention mask covers
        every position so far and each new token's position is its row's own count."""
        kw = {} if past is None else {self._cache_arg: past}
        if mask is None:
            return self.model(input_ids=ids, use_cache=True, **kw)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        return self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw
        )

    def _sample_rows(
        self,
        ids: torch.Tensor,
        params: SamplingParams,
        greedy: bool,
        mask: torch.Tensor | None = None,
    ) -> list[Sample]:
        # Without `mask` every row has the same length: no padding, no attention mask. With it,
        # prompts are left-padded (mask 0). Rows that finished keep decoding padding that is
        # cut off afterwards.
        n = ids.shape[0]
        out = self._forward(ids, mask)
        past, logits = self._cache_of(out), out.logits[:, -1]
        tokens = torch.full(
            (n, params.max_new_tokens), self.pad_id, dtype=torch.long, device=self.device
        )
        logprobs = torch.zeros(n, params.max_new_tokens, dtype=torch.float32, device=self.device)
        finished = torch.zeros(n, dtype=torch.bool, device=self.device)
        lengths = torch.full((n,), params.max_new_tokens, dtype=torch.long, device=self.device)
        versions = torch.full((n, params.max_new_tokens), self.version, dtype=torch.int32)
        for t in range(params.max_new_tokens):
            versions[:, t] = self.version
            logp = torch.log_softmax(logits.float() / params.temperature, dim=-1)
            if greedy:
                nxt = logp.argmax(-1, keepdim=True)
            else:
                logp = truncate_logprobs(logp, params.top_k, params.top_p)
                nxt = torch.multinomial(logp.exp(), 1, generator=self.rng)
            lp = logp.gather(-1, nxt).squeeze(-1)
            nxt = nxt.squeeze(-1)
            live = ~finished
            tokens[live, t] = nxt[live]
            logprobs[live, t] = lp[live]
            hit_eos = live & (nxt == self.eos_id)
            if params.stop:
                hit_eos |= live & self._stop_hits(tokens[:, : t + 1], params.stop)
            lengths[hit_eos] = t + 1
            finished |= hit_eos
            if bool(finished.all()) or t == params.max_new_tokens - 1:
                break
            if self._between_tokens is not None and (t + 1) % self._check_every == 0:
                before = self.version
                self._between_tokens()
                if self.version != before and self._inflight_mode == "reprefill":
                    # Re-prefill: the next token is drawn from the new weights over the whole
                    # prefix, with no KV state left from the old weights.
                    prefix = torch.cat([ids, tokens[:, : t + 1]], dim=1)
                    if mask is not None:
                        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
                    out = self._forward(prefix, mask)
                    past, logits = self._cache_of(out), out.logits[:, -1]
                    continue
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
            out = self._forward(nxt.unsqueeze(-1), mask, past)
            past, logits = self._cache_of(out), out.logits[:, -1]
        samples = []
        tokens_np, lp_np = tokens.cpu().numpy(), logprobs.cpu().numpy()
        for i in range(n):
            L = int(lengths[i])
            samples.append(
                Sample(
                    tokens=tokens_np[i, :L].astype(np.int32),
                    logprobs=lp_np[i, :L].astype(np.float32),
                    versions=versions[i, :L].numpy().astype(np.int32),
                    finish_reason="stop" if bool(finished[i]) else "length",
                )
            )
        return samples

    def _stop_hits(self, tokens: torch.Tensor, stop: list[str]) -> torch.Tensor:
        """Rows whose decoded response so far contains a stop string. Decoding only the last
        few tokens would miss strings split across tokens, so rows are decoded whole; stop
        strings are for short structured answers, not for long chains of thought."""
        texts = self.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in text for s in stop) for text in texts], device=tokens.device)

    def _cache_of(self, out):
        return getattr(out, self._cache_arg)

    def load_weights(self, blob: bytes, digest: str, version: int) -> None:
        load_into_model(self.model, verify_and_decode(blob, digest))
        self.version = version

    def health(self) -> tuple[bool, str]:
        return True, "in-process"  # the engine is this process: it answers if we do

    def close(self) -> None:
        pass
