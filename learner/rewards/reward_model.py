"""Reward-model reward: a Hugging Face sequence-classification model scores prompt+completion.

The model (num_labels=1) reads the prompt text followed by the completion text; its single
logit is the reward. Long inputs are truncated from the left so that the end of the
completion, where the model's score is read, is always kept.
"""

from __future__ import annotations

import logging

from asyncrl.learner.rewards import RewardInput, RewardResult
from asyncrl.learner.rewards.config import RewardConfig

logger = logging.getLogger(__name__)


class RewardModelReward:
    """Scores each prompt+completion with `AutoModelForSequenceClassification` (logit 0)."""

    def __init__(self, cfg: RewardConfig):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if cfg.reward_model_device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device = cfg.reward_model_device
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("reward.reward_model_device is 'cuda' but no CUDA device is visible")
        self.device = torch.device(device)
        self.batch_size = cfg.reward_model_batch_size
        self.max_length = cfg.reward_model_max_length

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.reward_model_path)
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(
                    f"reward model tokenizer at {cfg.reward_model_path} has neither a pad nor "
                    "an eos token"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Keep the completion's end: the score is read at the last token.
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForSequenceClassification.from_pretrained(
            cfg.reward_model_path, num_labels=1, torch_dtype="auto"
        )
        n_embed = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > n_embed:
            # Otherwise an out-of-range id fails deep inside the embedding lookup.
            raise ValueError(
                f"reward model at {cfg.reward_model_path}: tokenizer has {len(self.tokenizer)} "
                f"tokens but the model embeds only {n_embed}; the directory's tokenizer does "
                "not belong to its model"
            )
        if self.model.config.pad_token_id is None:
            # Decoder classifiers find each row's last real token through pad_token_id.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        logger.info(
            "reward model %s on %s (batch %d, max_length %s)",
            cfg.reward_model_path,
            self.device,
            self.batch_size,
            self.max_length,
        )

    def __call__(self, inp: RewardInput) -> RewardResult:
        import torch

        texts = [inp.prompt_text + c for c in inp.completions]
        rewards: list[float | None] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                ).to(self.device)
                logits = self.model(**batch).logits
                rewards.extend(logits[:, 0].float().cpu().tolist())
        return RewardResult(rewards)

    def close(self) -> None:
        # Free GPU memory now rather than when the hub is garbage-collected.
        self.model = None
